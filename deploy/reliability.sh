#!/usr/bin/env bash
# Reliability harness: proves that no receipt answered 200 is lost while the
# broker restarts, a worker is killed, ingest is rolled, the downstream
# receiver is down, or the broker refuses publishes (deploy/RELIABILITY.md).
#
#   deploy/reliability.sh            # long run (~8 min): the table in RELIABILITY.md
#   deploy/reliability.sh --short    # CI: small counts, short faults (< 3 min)
#   deploy/reliability.sh --cluster [--short]
#                                    # node losses on the local 3-node cluster
#                                    # (deploy/cluster.sh; 5672 is not touched)
#   DLR_BUILD_PROFILE=debug deploy/reliability.sh --short
#                                    # the same with the debug binaries that
#                                    # `cargo test` already built (CI saves a
#                                    # release build that way)
#
# Extra arguments go to dlr-harness (`target/release/dlr-harness --help`),
# e.g. `--only broker-restart,worker-kill` or `--keep`. It restarts and
# reconfigures the machine's RabbitMQ, so run it alone: it waits for other
# broker clients to disconnect first, and always restores the broker.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

cluster=false
for arg in "$@"; do
  [ "$arg" = --cluster ] && cluster=true
done
if $cluster; then
  # Its own nodes on 5701-5703; the machine's broker is left alone.
  bash deploy/services.sh postgres
  bash deploy/cluster.sh start
  AMQP_URL=$(bash deploy/cluster.sh urls)
  export AMQP_URL
else
  bash deploy/services.sh rabbitmq postgres
fi

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "reliability: installing nginx from Debian's packages" >&2
  as_root apt-get update -qq
  # Only the binary is wanted: the harness runs its own nginx on a loopback port.
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nginx >/dev/null
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

profile=${DLR_BUILD_PROFILE:-release}
case "$profile" in
  release) cargo build --release --locked -p dlr-ingest -p dlr-worker -p dlr-tests ;;
  debug) cargo build --locked -p dlr-ingest -p dlr-worker -p dlr-tests ;;
  *) echo "reliability: DLR_BUILD_PROFILE must be release or debug" >&2; exit 2 ;;
esac
bin_dir="${CARGO_TARGET_DIR:-target}/$profile"
exec "$bin_dir/dlr-harness" --bin-dir "$bin_dir" --nginx "$nginx_bin" "$@"
