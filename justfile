# roomd tasks. `just run` starts the daemon, `just test` runs every check.

venv := ".venv"
py := venv / "bin/python"

# Start roomd on 127.0.0.1:8765 with ./roomd-data (creates .venv when missing).
run *ARGS: _venv
    {{py}} -m pip install -q -e .
    {{venv}}/bin/roomd serve --host 127.0.0.1 --port 8765 --data-dir ./roomd-data {{ARGS}}

# Lint, type-check, check the import contract and run the whole test suite.
test *ARGS: _venv _redis _chromium
    {{py}} -m pip install -q -e '.[test]'
    {{venv}}/bin/ruff format --check roomd tests bench
    {{venv}}/bin/ruff check roomd tests bench
    {{venv}}/bin/mypy
    {{venv}}/bin/lint-imports
    {{py}} -m pytest {{ARGS}}

# Try the cluster: a local redis-server and 3 roomd nodes sharing it (ws ports 8771-8773).
cluster: _venv _redis
    #!/usr/bin/env bash
    set -euo pipefail
    {{py}} -m pip install -q -e .
    dir=./roomd-cluster
    mkdir -p "$dir"
    # Every node must share the token secret and API key: made once, kept in the dir.
    for name in token-secret api-key; do
        test -s "$dir/$name" || {{py}} -c 'import secrets; print(secrets.token_urlsafe(32))' > "$dir/$name"
    done
    export ROOMD_TOKEN_SECRET="$(cat "$dir/token-secret")" ROOMD_API_KEY="$(cat "$dir/api-key")"
    trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT
    redis-server --port 6390 --bind 127.0.0.1 --dir "$dir" --save '' --appendonly yes >"$dir/redis.log" &
    until redis-cli -p 6390 ping >/dev/null 2>&1; do sleep 0.1; done
    for i in 1 2 3; do
        mkdir -p "$dir/node$i"
        {{venv}}/bin/roomd serve --cluster redis://127.0.0.1:6390/0 --node-id "node$i" \
            --port "877$i" --api-port "878$i" --data-dir "$dir/node$i" &
    done
    echo "redis 127.0.0.1:6390 (AOF in $dir); a token: ROOMD_TOKEN_SECRET=\$(cat $dir/token-secret) {{venv}}/bin/roomd token alice"
    wait

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

# The browser tests drive Debian's chromium through Playwright (installed here when missing).
_chromium:
    command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)
