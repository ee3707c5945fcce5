#!/usr/bin/env bash
# Starts the whole service locally: RabbitMQ (the local one if it answers,
# otherwise installed and started; PostgreSQL too when a WORKER_ROUTE_* names
# postgres), then `ingest` on :8080 and `worker` with probes on :9090, both
# built in release mode into cargo's target directory (`target/release/`, or
# `$CARGO_TARGET_DIR/release/` when that is set). Configuration comes from the
# environment (see README).
#
# Runs in the foreground. Every output line starts with the name of the
# binary that wrote it; once both answer /readyz it prints `run.sh: ready: ...`
# and keeps running until Ctrl-C or SIGTERM, which stop both after their
# drain. If one of them exits first (before or after being ready), the script
# stops the other and exits with that binary's status: a misconfiguration
# never looks like a start.
#
# DLR_BIN_DIR=target/debug runs already built binaries from there instead
# (no release build). RUN_READY_TIMEOUT_SECONDS bounds the wait (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."

services=(rabbitmq)
if env | grep -q '^WORKER_ROUTE_.*postgres'; then services+=(postgres); fi
bash deploy/services.sh "${services[@]}"

bin_dir="${DLR_BIN_DIR:-}"
if [[ -z "$bin_dir" ]]; then
  cargo build --release --locked -p dlr-ingest -p dlr-worker
  # Where cargo put them: `target/` unless CARGO_TARGET_DIR (or a cargo
  # config's build.target-dir) says otherwise; cargo metadata knows which.
  target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  bin_dir="${target_dir:-target}/release"
fi

export LOG_FORMAT="${LOG_FORMAT:-text}"
if [[ -z "${VONAGE_SIGNATURE_MODE:-}${VONAGE_SIGNATURE_SECRET:-}" ]]; then export VONAGE_SIGNATURE_MODE=off; echo "run.sh: VONAGE_SIGNATURE_MODE=off for the README's unsigned demo (a provider without credentials is not served otherwise; production sets VONAGE_SIGNATURE_SECRET)" >&2; fi
ingest_addr="${INGEST_ADDR:-0.0.0.0:8080}"
worker_addr="${WORKER_ADDR:-0.0.0.0:9090}"

# `sed -u` so lines appear as they are written, not when a buffer fills.
"$bin_dir/ingest" > >(sed -u 's/^/ingest | /') 2>&1 &
ingest=$!
"$bin_dir/worker" > >(sed -u 's/^/worker | /') 2>&1 &
worker=$!

# Asked to stop (Ctrl-C, SIGTERM): both binaries drain and exit; so does
# this script, with 0 when both drained cleanly, else the first failure.
stop_both() {
  local status=0 code
  kill -TERM "$ingest" "$worker" 2>/dev/null || true
  for pid in "$ingest" "$worker"; do
    code=0
    wait "$pid" 2>/dev/null || code=$?
    [ "$status" -ne 0 ] || status=$code
  done
  return "$status"
}
trap 'stop_both; exit $?' INT TERM

# A wildcard listen address is probed on loopback.
probe() {
  local addr=$1
  addr=${addr/#0.0.0.0:/127.0.0.1:}
  addr=${addr/#\[::\]:/[::1]:}
  curl -fsS -o /dev/null --max-time 1 "http://$addr/readyz" 2>/dev/null
}

# Exits with the status of a binary that stopped on its own.
exit_if_gone() {
  local name=$1 pid=$2 status=0
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" || status=$?
    sleep 0.2 # let the prefixing sed print the binary's last lines first
    echo "run.sh: $name exited with status $status (its error is above); stopping" >&2
    stop_both || true
    exit $((status == 0 ? 1 : status))
  fi
}

deadline=$((SECONDS + ${RUN_READY_TIMEOUT_SECONDS:-60}))
until probe "$ingest_addr" && probe "$worker_addr"; do
  exit_if_gone ingest "$ingest"
  exit_if_gone worker "$worker"
  if ((SECONDS >= deadline)); then
    echo "run.sh: not ready after ${RUN_READY_TIMEOUT_SECONDS:-60} s (http://$ingest_addr/readyz, http://$worker_addr/readyz); stopping" >&2
    stop_both || true
    exit 1
  fi
  sleep 0.3
done
echo "run.sh: ready: ingest on $ingest_addr, worker probes on $worker_addr; Ctrl-C to stop"

status=0
wait -n "$ingest" "$worker" || status=$?
echo "run.sh: a binary stopped (status $status); stopping the other" >&2
stop_both || true
exit "$status"
