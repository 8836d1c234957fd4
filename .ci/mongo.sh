#!/usr/bin/env bash
# Starts a MongoDB-wire test server (SecantusDB, pinned) for coatcheck-mongo's tests.
#
#   .ci/mongo.sh <port> <pidfile> [logfile]
#
# - creates (or reuses) the venv `.venv-mongo` in the repository root with SecantusDB==0.7.0b3;
# - starts `secantusd-py --host 127.0.0.1 --port <port> --storage-path :memory:` in the
#   background (output to <logfile>, default .venv-mongo/secantusd-<port>.log);
# - waits (at most MONGO_WAIT_SECS, default 60 s) until the port accepts connections;
# - writes the server's process id to <pidfile> and exits 0.
#
# On failure it stops the server it started and exits non-zero. The caller runs the tests
# with MONGODB_URL="mongodb://127.0.0.1:<port>/?directConnection=true" and later stops the
# server with `kill "$(cat <pidfile>)"`.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 <port> <pidfile> [logfile]" >&2
    exit 2
fi
port=$1
pidfile=$2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv-mongo"
logfile=${3:-$venv/secantusd-$port.log}
version="0.7.0b3"
wait_secs=${MONGO_WAIT_SECS:-60}

if ! [[ "$port" =~ ^[0-9]+$ ]]; then
    echo "mongo.sh: port must be a number, got '$port'" >&2
    exit 2
fi

if [[ ! -x "$venv/bin/secantusd-py" ]] || \
   [[ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("SecantusDB"))' 2>/dev/null)" != "$version" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "SecantusDB==$version" >&2
fi

port_open() {
    # bash's /dev/tcp: no dependency on nc or ss.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

if port_open "$port"; then
    echo "mongo.sh: port $port is already in use" >&2
    exit 1
fi

mkdir -p "$(dirname "$logfile")" "$(dirname "$pidfile")"
# Run from the venv directory so that no stray ./secantusd.toml is picked up.
(cd "$venv" && exec "$venv/bin/secantusd-py" --host 127.0.0.1 --port "$port" \
    --storage-path :memory: --log-level WARNING) >"$logfile" 2>&1 &
pid=$!
echo "$pid" >"$pidfile"

deadline=$((SECONDS + wait_secs))
until port_open "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "mongo.sh: secantusd-py exited early; log follows" >&2
        cat "$logfile" >&2 || true
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        echo "mongo.sh: secantusd-py did not open port $port within ${wait_secs}s" >&2
        kill "$pid" 2>/dev/null || true
        cat "$logfile" >&2 || true
        exit 1
    fi
    sleep 0.2
done
echo "mongo.sh: SecantusDB $version listening on 127.0.0.1:$port (pid $pid)" >&2
