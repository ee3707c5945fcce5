#!/usr/bin/env bash
# Benchmarks ingest and worker against the local RabbitMQ (and PostgreSQL
# for the status-store run), measuring the broker's own ceilings in the same
# run. Release build (fat LTO: the first build takes several minutes), then
# about three minutes of measurements. Extra arguments go to dlr-bench
# (see `target/release/dlr-bench --help`). The binaries are taken from
# $CARGO_TARGET_DIR/release when it is set (where cargo just built them),
# target/release otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/services.sh rabbitmq postgres
cargo build --release --locked -p dlr-ingest -p dlr-worker -p dlr-tests
bin_dir="${CARGO_TARGET_DIR:-target}/release"
exec "$bin_dir/dlr-bench" --bin-dir "$bin_dir" "$@"
