#!/usr/bin/env bash
# Starts (or reuses) a local 3-master Redis Cluster on 127.0.0.1 for the coatcheck-redis
# tests, and prints the value for REDIS_CLUSTER_URLS on stdout (everything else goes to
# stderr).
#
#   export REDIS_CLUSTER_URLS="$(.ci/redis-cluster.sh)"
#
# Idempotent: nodes already answering are reused, a cluster already formed is left alone.
# Ports: REDIS_CLUSTER_PORTS (default "7001 7002 7003"); node files, logs and pid files in
# REDIS_CLUSTER_DIR (default ${TMPDIR:-/tmp}/coatcheck-redis-cluster). Data is not persisted.
# Stop it with:  .ci/redis-cluster.sh stop
# Other binaries of the same protocol (Valkey: .ci/valkey.sh) via REDIS_SERVER_BIN and
# REDIS_CLI_BIN.
set -euo pipefail

HOST=127.0.0.1
read -r -a PORTS <<<"${REDIS_CLUSTER_PORTS:-7001 7002 7003}"
DIR="${REDIS_CLUSTER_DIR:-${TMPDIR:-/tmp}/coatcheck-redis-cluster}"

SERVER_BIN=${REDIS_SERVER_BIN:-redis-server}
CLI_BIN=${REDIS_CLI_BIN:-redis-cli}
log() { echo "redis-cluster: $*" >&2; }
cli() { local port=$1; shift; "$CLI_BIN" -h "$HOST" -p "$port" "$@"; }
field() { cli "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"; }

for bin in "$SERVER_BIN" "$CLI_BIN"; do
  command -v "$bin" >/dev/null || { log "$bin not found"; exit 1; }
done

if [[ "${1:-}" == "stop" ]]; then
  for p in "${PORTS[@]}"; do
    if [[ -f "$DIR/redis-$p.pid" ]]; then
      kill "$(cat "$DIR/redis-$p.pid")" 2>/dev/null || true
      rm -f "$DIR/redis-$p.pid"
    fi
  done
  exit 0
fi

mkdir -p "$DIR"

# 1. Every node up, in cluster mode.
for p in "${PORTS[@]}"; do
  if [[ "$(cli "$p" ping 2>/dev/null)" != "PONG" ]]; then
    log "starting node on $HOST:$p"
    "$SERVER_BIN" --bind "$HOST" --port "$p" --cluster-enabled yes \
      --cluster-config-file "$DIR/nodes-$p.conf" --cluster-node-timeout 5000 \
      --dir "$DIR" --save "" --appendonly no --daemonize yes \
      --pidfile "$DIR/redis-$p.pid" --logfile "$DIR/redis-$p.log" >&2
  fi
done
for p in "${PORTS[@]}"; do
  for _ in $(seq 100); do
    [[ "$(cli "$p" ping 2>/dev/null)" == "PONG" ]] && break
    sleep 0.1
  done
  [[ "$(cli "$p" ping 2>/dev/null)" == "PONG" ]] || { log "node $p does not answer (see $DIR/redis-$p.log)"; exit 1; }
  if ! cli "$p" info cluster | tr -d '\r' | grep -q '^cluster_enabled:1'; then
    log "something on $HOST:$p answers but is not a cluster-mode Redis"; exit 1
  fi
done

formed() {
  for p in "${PORTS[@]}"; do
    [[ "$(field "$p" cluster_state)" == "ok" ]] || return 1
    [[ "$(field "$p" cluster_known_nodes)" -ge "${#PORTS[@]}" ]] || return 1
  done
}

wait_formed() {
  for _ in $(seq "$1"); do
    formed && return 0
    sleep 0.2
  done
  return 1
}

# 2. Form the cluster unless it already is. Nodes restarted from their nodes-*.conf rejoin
#    on their own (give them a moment); brand-new nodes are joined; anything else is reset.
all_fresh() {
  for p in "${PORTS[@]}"; do
    [[ "$(field "$p" cluster_known_nodes)" == "1" && "$(field "$p" cluster_slots_assigned)" == "0" ]] || return 1
  done
}
if ! formed; then
  if all_fresh || ! wait_formed 50; then
    if ! all_fresh; then
      log "nodes are in a half-formed state; resetting them"
      for p in "${PORTS[@]}"; do
        cli "$p" flushall >/dev/null
        cli "$p" cluster reset hard >/dev/null
      done
    fi
    nodes=()
    for p in "${PORTS[@]}"; do nodes+=("$HOST:$p"); done
    log "creating the cluster: ${nodes[*]}"
    "$CLI_BIN" --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >&2
    wait_formed 150 || { log "cluster did not reach cluster_state:ok"; exit 1; }
  fi
fi
log "cluster_state:ok on ${PORTS[*]}"

urls=()
for p in "${PORTS[@]}"; do urls+=("redis://$HOST:$p"); done
(IFS=,; echo "${urls[*]}")
