# roomd tasks. `just run` starts the daemon, `just test` runs every check.

venv := ".venv"
py := venv / "bin/python"

# Start roomd on 127.0.0.1:8765 with ./roomd-data (creates .venv when missing).
run *ARGS: _venv
    {{py}} -m pip install -q -e .
    {{venv}}/bin/roomd serve --host 127.0.0.1 --port 8765 --data-dir ./roomd-data {{ARGS}}

# Lint, type-check, check the import contract and run the whole test suite.
test *ARGS: _venv _redis
    {{py}} -m pip install -q -e '.[test]'
    {{venv}}/bin/ruff format --check roomd tests bench
    {{venv}}/bin/ruff check roomd tests bench
    {{venv}}/bin/mypy
    {{venv}}/bin/lint-imports
    {{py}} -m pytest {{ARGS}}

# Print a token for AID, signed with the data dir's secret.
token AID: _venv
    {{py}} -m pip install -q -e .
    {{venv}}/bin/roomd token {{AID}} --data-dir ./roomd-data

# Run the benchmark suite (fresh roomd per scenario), or one: fanout, rooms, idle, churn, soak (10 min, on request only).
bench *ARGS: _venv
    {{py}} -m pip install -q -e .
    {{py}} -m bench {{ARGS}}

_venv:
    test -x {{py}} || python3 -m venv {{venv}}

# The cluster tests start Debian's redis-server (installed here when missing).
_redis:
    command -v redis-server >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server)
