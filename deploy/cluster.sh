#!/usr/bin/env bash
# A local 3-node RabbitMQ cluster for the cluster tests, the harness's
# `--cluster` scenarios and for trying the replicated broker by hand. It
# never touches the machine's own broker (5672): each node has its own node
# name, ports, config, data and log directories under $DLR_CLUSTER_DIR.
#
#   deploy/cluster.sh start          # start (or complete) the cluster; idempotent
#   deploy/cluster.sh status         # nodes, running or not, members seen by node 1
#   deploy/cluster.sh stop           # stop all nodes (data kept)
#   deploy/cluster.sh reset          # stop and delete all data (a fresh cluster next start)
#   deploy/cluster.sh urls           # the AMQP_URL list for ingest and worker
#   deploy/cluster.sh kill-node N    # kill -9 node N (1-3): a crash
#   deploy/cluster.sh stop-node N    # clean stop of node N
#   deploy/cluster.sh start-node N   # start node N and wait until it runs again
#   deploy/cluster.sh ctl N|any ARGS # rabbitmqctl ARGS against node N (any: the first running)
#   deploy/cluster.sh queues N ARGS  # rabbitmq-queues ARGS against node N, e.g.
#                                    # `queues 1 rebalance quorum --queue-pattern '^dlr\.receipts\.'`
#
# Node N is dlrN@localhost with AMQP on 127.0.0.1:570N and Erlang distribution
# on 2570N; management is off. Partition handling is pause_minority, as the
# RabbitMQ cluster operator configures it: a node that sees no majority stops
# serving clients, so they move to a node that can.
set -euo pipefail

base=${DLR_CLUSTER_DIR:-/tmp/dlr-cluster}
nodes=(1 2 3)
rabbit_bin=/usr/lib/rabbitmq/bin
# Re-send interval of an unconfirmed at-least-once dead-letter hop (see prepare).
dlx_resend_ms=10000

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

node_name() { echo "dlr$1@localhost"; }
amqp_port() { echo $((5700 + $1)); }
dist_port() { echo $((25700 + $1)); }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Runs a command as the rabbitmq user with node N's environment. HOME is the
# rabbitmq user's so all nodes and the CLI share one Erlang cookie. It runs
# from / : the Erlang VM looks up modules in its working directory too, and
# a caller's directory the rabbitmq user cannot read (a checkout under
# /root, as on a fresh machine) turns every rabbitmqctl call into eacces
# errors mixed into its output.
as_rabbitmq() {
  local n=$1
  shift
  local dir="$base/dlr$n"
  (cd / && as_root env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin HOME=/var/lib/rabbitmq LANG=C.UTF-8 \
    RABBITMQ_NODENAME="$(node_name "$n")" \
    RABBITMQ_DIST_PORT="$(dist_port "$n")" \
    RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_PID_FILE="$dir/rabbitmq.pid" \
    setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$@")
}

ctl() {
  local n=$1
  shift
  as_rabbitmq "$n" "$rabbit_bin/rabbitmqctl" -n "$(node_name "$n")" "$@"
}

queues() {
  local n=$1
  shift
  as_rabbitmq "$n" "$rabbit_bin/rabbitmq-queues" -n "$(node_name "$n")" "$@"
}

prepare() {
  local n=$1
  local dir="$base/dlr$n"
  as_root mkdir -p "$dir/mnesia" "$dir/log"
  # The Debian package's config pins the listener to 5672: each node gets its own.
  as_root tee "$dir/rabbitmq.conf" >/dev/null <<EOF
listeners.tcp.default = 127.0.0.1:$(amqp_port "$n")
cluster_partition_handling = pause_minority
log.file.level = info
log.console = false
EOF
  as_root tee "$dir/rabbitmq-env.conf" >/dev/null <<EOF
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
  echo '[].' | as_root tee "$dir/enabled_plugins" >/dev/null
  # Retries come back from their delay queues by at-least-once dead-lettering
  # into the receipts queue. A hop the target does not confirm (its leader is
  # being elected after a node loss) is re-sent only after this timeout:
  # 180 s by default, so retries stalled for three minutes after every node
  # loss. The same value as deploy/k8s/base/rabbitmq.yaml; RabbitMQ 4 reads
  # the _ms name, 3.x the other.
  as_root tee "$dir/advanced.config" >/dev/null <<EOF
[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, $dlx_resend_ms},
           {dead_letter_worker_publisher_confirm_timeout_ms, $dlx_resend_ms}]}].
EOF
  as_root chown -R rabbitmq:rabbitmq "$base"
}

running() { ctl "$1" --timeout 5 ping >/dev/null 2>&1; }

start_node() {
  local n=$1
  prepare "$n"
  if running "$n"; then
    return 0
  fi
  if port_open "$(amqp_port "$n")" || port_open "$(dist_port "$n")"; then
    echo "cluster: port $(amqp_port "$n") or $(dist_port "$n") is taken by something that is not $(node_name "$n")" >&2
    return 1
  fi
  # No inherited descriptors: a caller reading this script's output would
  # otherwise wait for the node to exit, and a lock the caller holds
  # (`flock cluster.lock deploy/reliability.sh --cluster`: the harness
  # restarts nodes) would be held by the node until it stops.
  (
    close_inherited
    as_rabbitmq "$n" sh -c "cd '$base/dlr$n' && exec '$rabbit_bin/rabbitmq-server'"
  ) </dev/null >>"$base/dlr$n/log/startup.log" 2>&1 &
  disown || true
}

# Closes every descriptor above 2 of the calling (sub)shell.
close_inherited() {
  local fd
  for fd in /proc/"$BASHPID"/fd/*; do
    fd=${fd##*/}
    if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
}

# await_startup fails outright while the node is still registering with epmd.
await_node() {
  local n=$1
  for _ in $(seq 1 60); do
    if ctl "$n" --timeout 60 await_startup >/dev/null 2>&1; then
      return 0
    fi
    sleep 1
  done
  echo "cluster: $(node_name "$n") did not start; see $base/dlr$n/log/" >&2
  return 1
}

member_of_cluster() {
  ctl "$1" --timeout 10 eval 'rabbit_mnesia:cluster_nodes(all).' 2>/dev/null | grep -q "dlr1@localhost"
}

join() {
  local n=$1
  member_of_cluster "$n" && return 0
  ctl "$n" stop_app >/dev/null
  ctl "$n" join_cluster "$(node_name 1)" >/dev/null
  ctl "$n" start_app >/dev/null
}

node_arg() {
  case "${1:-}" in
    1 | 2 | 3) echo "$1" ;;
    *) echo "cluster: node must be 1, 2 or 3" >&2; exit 2 ;;
  esac
}

urls() {
  local list=""
  for n in "${nodes[@]}"; do
    list="${list:+$list,}amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f"
  done
  echo "$list"
}

cmd=${1:-}
case "$cmd" in
  start)
    command -v rabbitmq-server >/dev/null 2>&1 || bash "$(dirname "$0")/services.sh" rabbitmq
    # All nodes start together: a node that was clustered waits at boot for
    # its peers, so starting them one by one after a crash could deadlock.
    for n in "${nodes[@]}"; do start_node "$n"; done
    for n in "${nodes[@]}"; do await_node "$n"; done
    for n in 2 3; do join "$n"; done
    # A node left running by an older checkout (or changed by hand) still
    # has its old setting: apply the one of prepare() to every node. Queues
    # declared from now on pick it up.
    for n in "${nodes[@]}"; do
      ctl "$n" eval "application:set_env(rabbit, dead_letter_worker_publisher_confirm_timeout, $dlx_resend_ms),
        application:set_env(rabbit, dead_letter_worker_publisher_confirm_timeout_ms, $dlx_resend_ms)." >/dev/null
    done
    echo "cluster: running; AMQP_URL=$(urls)"
    ;;
  status)
    for n in "${nodes[@]}"; do
      if running "$n"; then state=running; else state=down; fi
      echo "$(node_name "$n") amqp 127.0.0.1:$(amqp_port "$n") $state"
    done
    if running 1; then
      ctl 1 --timeout 10 eval 'rabbit_mnesia:cluster_nodes(running).' 2>/dev/null | sed 's/^/running members: /'
    fi
    ;;
  stop)
    for n in "${nodes[@]}"; do
      if running "$n"; then ctl "$n" stop >/dev/null 2>&1 || true; fi
    done
    echo "cluster: stopped"
    ;;
  reset)
    "$0" stop
    # A node that did not answer `stop` is killed by its own pid file.
    for n in "${nodes[@]}"; do
      pid=$(as_root cat "$base/dlr$n/rabbitmq.pid" 2>/dev/null || true)
      if [ -n "$pid" ]; then as_root kill -9 "$pid" 2>/dev/null || true; fi
    done
    as_root rm -rf "$base"
    echo "cluster: data removed"
    ;;
  urls) urls ;;
  kill-node)
    n=$(node_arg "${2:-}")
    pid=$(as_root cat "$base/dlr$n/rabbitmq.pid" 2>/dev/null || true)
    if [ -z "$pid" ]; then
      # No pid file (an interrupted start, a hand-made node): ask the node.
      # A kill that silently did nothing would make a fault scenario pass.
      pid=$(ctl "$n" eval 'os:getpid().' 2>/dev/null | tr -dc '0-9' || true)
    fi
    if [ -z "$pid" ]; then
      echo "cluster: cannot kill $(node_name "$n"): not running, or its pid is unknown" >&2
      exit 1
    fi
    as_root kill -9 "$pid" 2>/dev/null || true
    echo "cluster: killed $(node_name "$n") (pid $pid)"
    ;;
  stop-node)
    n=$(node_arg "${2:-}")
    ctl "$n" stop >/dev/null 2>&1 || true
    ;;
  start-node)
    n=$(node_arg "${2:-}")
    start_node "$n"
    await_node "$n"
    ;;
  ctl)
    target=${2:-}
    shift 2 || true
    if [ "$target" = any ]; then
      # Each CLI call boots an Erlang VM: try the command itself on each
      # node rather than pinging first (a stopped node fails fast).
      for n in "${nodes[@]}"; do
        if output=$(ctl "$n" "$@" 2>/dev/null); then
          printf '%s\n' "$output"
          exit 0
        fi
      done
      echo "cluster: no node could run: rabbitmqctl $*" >&2
      exit 1
    fi
    n=$(node_arg "$target")
    ctl "$n" "$@"
    ;;
  queues)
    n=$(node_arg "${2:-}")
    shift 2
    queues "$n" "$@"
    ;;
  *)
    echo "usage: deploy/cluster.sh start|status|stop|reset|urls|kill-node N|stop-node N|start-node N|ctl N|any ARGS|queues N ARGS" >&2
    exit 2
    ;;
esac
