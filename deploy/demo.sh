#!/usr/bin/env bash
# The demo: sets up this machine (services found running, started, or installed with apt),
# builds Warren, migrates a demo database, starts two worker processes, enqueues 10,000 jobs
# (mostly noop, some echo and sleep, a few permanent failures), shows live progress, prints a
# summary from Postgres, and stops the workers gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/services.sh
ensure_rust
ensure_services

export WARREN_AMQP_URL="${WARREN_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export WARREN_DATABASE_URL="${WARREN_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/warren_demo}"
export WARREN_NAMESPACE="${WARREN_NAMESPACE:-warren-demo}"
mkdir -p .demo

log "building (release)"
cargo build --release -q -p warren-worker -p warren-cli
# Where cargo put the binaries (CARGO_TARGET_DIR, when set, moves them).
bin="${CARGO_TARGET_DIR:-target}/release"
warren="$bin/warren"

log "migrating a fresh demo database"
# Start from an empty database so the summary counts this run only (only the demo's own
# database is ever dropped).
db=${WARREN_DATABASE_URL##*/}
if [ "${db%%\?*}" = warren_demo ] && command -v psql >/dev/null; then
  psql -q "${WARREN_DATABASE_URL%/*}/postgres" -c 'DROP DATABASE IF EXISTS warren_demo WITH (FORCE)' 2>/dev/null || true
fi
$warren migrate --create-database

log "starting two workers (logs in .demo/worker-*.log)"
pids=()
for i in 1 2; do
  WARREN_WORKER_ID="demo-worker-$i" "$bin/warren-worker" --concurrency 64 \
    >".demo/worker-$i.log" 2>&1 &
  pids+=($!)
done
stop_workers() {
  log "stopping the workers gracefully (SIGTERM)"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop_workers EXIT
# The workers declare the queue on start; wait until it exists.
for _ in $(seq 1 100); do
  $warren queues declare default >/dev/null 2>&1 && break
  sleep 0.1
done

start=$(date +%s)
log "enqueueing 10,000 jobs"
$warren enqueue warren.noop --payload '{}' --count 9000
$warren enqueue warren.echo --payload '{"hello":"warren"}' --count 700
$warren enqueue warren.sleep --payload '{"ms":20}' --count 250
$warren enqueue warren.fail --payload '{"permanent":true}' --count 50

log "progress"
while :; do
  json=$($warren jobs summary --since 10m --json)
  finished=$(grep -o '"finished": *[0-9]*' <<<"$json" | grep -o '[0-9]*$' || echo 0)
  printf '\r  %5s / 10000 jobs finished' "$finished"
  [ "$finished" -ge 10000 ] && break
  if [ $(( $(date +%s) - start )) -gt 300 ]; then
    echo; echo "error: not all jobs finished within 5 minutes; see .demo/worker-*.log" >&2
    exit 1
  fi
  sleep 1
done
echo

log "summary from Postgres"
$warren jobs summary --since 10m
stop_workers
trap - EXIT
$warren workers
