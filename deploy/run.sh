#!/usr/bin/env bash
# Starts the whole service locally: RabbitMQ (the local one if it answers,
# otherwise installed and started), then `ingest` on :8080 and `worker` with
# probes on :9090, both built in release mode. Ctrl-C stops both (they drain
# first). Configuration comes from the environment (see README).
set -euo pipefail
cd "$(dirname "$0")/.."

services=(rabbitmq)
if env | grep -q '^WORKER_ROUTE_.*postgres'; then services+=(postgres); fi
bash deploy/services.sh "${services[@]}"

cargo build --release --locked -p dlr-ingest -p dlr-worker

export LOG_FORMAT="${LOG_FORMAT:-text}"
target/release/ingest &
ingest=$!
target/release/worker &
worker=$!
trap 'kill -TERM "$ingest" "$worker" 2>/dev/null; wait' INT TERM
echo "ingest on ${INGEST_ADDR:-0.0.0.0:8080}, worker probes on ${WORKER_ADDR:-0.0.0.0:9090}; Ctrl-C to stop"
wait -n "$ingest" "$worker" || true
kill -TERM "$ingest" "$worker" 2>/dev/null || true
wait
