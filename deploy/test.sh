#!/usr/bin/env bash
# The full test suite, exactly as CI runs it (.ci/run calls this script):
# formatting, lints, unit and black-box tests against the real RabbitMQ and
# PostgreSQL (started here if nothing listens on their ports), the deploy
# checks, then the reliability harness, which restarts the broker and so runs
# alone, after everything else.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/services.sh rabbitmq postgres

# Tests remove what they create; this sweeps what a crashed or failed run left
# behind. It runs on every way out (the suite failing included) and keeps the
# suite's exit status.
sweep() {
  command -v rabbitmqctl >/dev/null 2>&1 || return 0
  rabbitmqctl --silent list_queues name 2>/dev/null | grep '^test\.' | xargs -r -n1 rabbitmqctl --silent delete_queue >/dev/null 2>&1 || true
  # rabbitmqctl has no delete_exchange; the broker's own function does it.
  # Test names are [a-z0-9.] only (unique_topology), so they quote safely.
  rabbitmqctl --silent list_exchanges name 2>/dev/null | grep -E '^test\.[a-z0-9.]+$' | while read -r exchange; do
    rabbitmqctl --silent eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$exchange\">>), false, <<\"deploy/test.sh\">>)." </dev/null >/dev/null 2>&1 || true
  done || true
}
on_exit() {
  local status=$?
  sweep || true
  exit "$status"
}
trap on_exit EXIT

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== tests that alter the machine's broker (alarms, restarts): alone, one at a time"
cargo test --workspace --locked -- --ignored --test-threads=1

echo "== deploy checks"
bash deploy/check-manifests.sh

echo "== reliability harness (short; restarts the broker, so it runs last and alone)"
DLR_BUILD_PROFILE=debug bash deploy/reliability.sh --short

echo "== reliability harness on a local 3-node cluster (short: all seven node-loss scenarios)"
# deploy/cluster.sh runs the nodes on 5701-5703; the machine's broker is not touched. The
# nodes stay up afterwards for the next run (deploy/cluster.sh stop ends them).
DLR_BUILD_PROFILE=debug bash deploy/reliability.sh --cluster --short
