"""The SQLite store's schema, its version, and the migration of older files in place.

The version lives in `PRAGMA user_version`. Version 0 is the schema of roomd
1.0 (`rooms` and `alive`, no version set); version 1 adds each room's stream
`epoch`, `key_epoch` and `bans`, and the `messages` table of history. A file
of an older version is migrated at open, in one transaction; a file newer than
this roomd knows is refused, so an old binary never misreads new data.
"""

from __future__ import annotations

import sqlite3

from roomd.errors import ConfigError

SCHEMA_VERSION = 1

_ROOMS = """
CREATE TABLE IF NOT EXISTS rooms (
    room_id TEXT PRIMARY KEY,
    host TEXT,
    encrypted_room_key BLOB,
    created_at INTEGER NOT NULL,
    empty_since INTEGER,
    seq_reserved INTEGER NOT NULL
)
"""
# One row: when roomd last marked itself alive.
_ALIVE = """
CREATE TABLE IF NOT EXISTS alive (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at_ms INTEGER NOT NULL
)
"""
# Version 1: the columns 1.1 adds to rooms (defaults fill rows written by 1.0),
# and history.
_V1_ROOM_COLUMNS = (
    "ALTER TABLE rooms ADD COLUMN epoch TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE rooms ADD COLUMN key_epoch INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE rooms ADD COLUMN bans TEXT NOT NULL DEFAULT '[]'",
)
_MESSAGES = """
CREATE TABLE IF NOT EXISTS messages (
    room_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    ciphertext BLOB NOT NULL,
    iv BLOB,
    client_msg_id TEXT,
    ts INTEGER NOT NULL,
    key_epoch INTEGER,
    PRIMARY KEY (room_id, seq)
) WITHOUT ROWID
"""
_MESSAGES_BY_TS = "CREATE INDEX IF NOT EXISTS messages_by_ts ON messages (ts)"


def check_version(db: sqlite3.Connection, name: str) -> int:
    """Return the schema version of `db` (the file `name`); raise `ConfigError` if too new."""
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise ConfigError(
            f"{name} has schema version {found}, newer than this roomd knows"
            f" ({SCHEMA_VERSION}): run the roomd that wrote it, or a newer one"
        )
    return found


def migrate(db: sqlite3.Connection, name: str) -> int:
    """Bring the database `db` (the file `name`) to `SCHEMA_VERSION`; return the version it had.

    Raises `ConfigError` when the file is newer than this roomd knows.
    """
    found = check_version(db, name)
    if found == SCHEMA_VERSION:
        return found
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(_ROOMS)
        db.execute(_ALIVE)
        columns = {row[1] for row in db.execute("PRAGMA table_info(rooms)")}
        for statement in _V1_ROOM_COLUMNS:
            column = statement.split("ADD COLUMN ")[1].split()[0]
            if column not in columns:
                db.execute(statement)
        db.execute(_MESSAGES)
        db.execute(_MESSAGES_BY_TS)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return found
