#!/usr/bin/env bash
# Ingest's CPU cost per receipt as a count of instructions, for comparing two
# builds on a shared machine where receipts/s are noise.
#
# usage: deploy/instructions.sh [INGEST_BINARY ...]
#        (default: the release build of this checkout, built here)
#
# Each binary runs under valgrind's callgrind (which counts instructions
# executed, the same for the same binary and input however busy the machine
# is: https://valgrind.org/docs/manual/cl-manual.html) against the local
# RabbitMQ, and wrk posts distinct Vonage SMS receipts on 16 connections.
# Two loads of different lengths are measured and the difference is divided
# by the difference in receipts stored, so start-up and shutdown cancel out.
# The count covers ingest's own user-space work only: the kernel's (sockets)
# and the broker's are not in it, which `dlr-bench` measures as CPU time.
#
# Build with the shipped profile for absolute numbers; for an A/B of two
# commits a quicker build is fine as long as both use it, e.g.
#   CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
#     cargo build --release -p dlr-ingest
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/services.sh rabbitmq

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "instructions: installing $2 from Debian's packages" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get install -y -qq "$2" >/dev/null
}
need valgrind valgrind
need wrk wrk

if [ $# -eq 0 ]; then
  cargo build --release --locked -p dlr-ingest
  set -- "${CARGO_TARGET_DIR:-target}/release/ingest"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/post.lua" <<'LUA'
-- Every request a distinct receipt (message id from a random prefix and a counter).
counter = 0
request = function()
  counter = counter + 1
  local id = string.format("%08X%08X", math.random(0, 0x7fffffff), counter)
  local body = "msisdn=447700900123&to=AcmeShop&network-code=23415&messageId=" .. id ..
    "&price=0.03330000&status=delivered&scts=2503140926&err-code=0&message-timestamp=2025-03-14+09%3A26%3A41"
  return wrk.format("POST", "/dlr/vonage", {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end
LUA

stored() {
  curl -fs "http://127.0.0.1:$1/metrics" |
    awk '/^dlr_ingest_http_requests_total/ && /status="200"/ {s += $2} END {print s + 0}'
}

# One run: prints "<instructions> <receipts stored>" for a load of $2 seconds.
run() {
  local bin=$1 seconds=$2 port=$((20000 + RANDOM % 20000)) name="bench.instructions.$RANDOM"
  AMQP_EXCHANGE=$name.x AMQP_QUEUE=$name.q AMQP_PARKED_QUEUE=$name.parked \
    AMQP_QUARANTINE_QUEUE=$name.quarantine INGEST_ADDR=127.0.0.1:$port \
    VONAGE_SIGNATURE_MODE=off RUST_LOG=warn \
    valgrind --tool=callgrind --callgrind-out-file="$work/out.%p" "$bin" >"$work/log" 2>&1 &
  local pid=$!
  local tries=0
  until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null; do
    tries=$((tries + 1))
    if [ $tries -gt 240 ]; then
      echo "instructions: $bin not ready on :$port; its output:" >&2
      tail -5 "$work/log" >&2
      kill "$pid" 2>/dev/null || true
      return 1
    fi
    sleep 0.5
  done
  wrk -t1 -c16 -d"${seconds}s" -s "$work/post.lua" "http://127.0.0.1:$port" >/dev/null
  local receipts
  receipts=$(stored "$port")
  kill -TERM "$pid"
  wait "$pid" || true
  rabbitmqctl --silent delete_queue "$name.q" >/dev/null 2>&1 || true
  local total
  total=$(grep -h '^summary:\|^totals:' "$work"/out.* | head -1 | awk '{print $2}')
  rm -f "$work"/out.*
  echo "$total $receipts"
}

printf '%-50s %12s %10s\n' "binary" "instr/receipt" "receipts"
for bin in "$@"; do
  read -r short_total short_n < <(run "$bin" 5)
  read -r long_total long_n < <(run "$bin" 15)
  awk -v b="$bin" -v st="$short_total" -v sn="$short_n" -v lt="$long_total" -v ln="$long_n" 'BEGIN {
    if (ln <= sn) { printf "%-50s %12s %10d\n", b, "n/a", ln; exit }
    printf "%-50s %12.0f %10d\n", b, (lt - st) / (ln - sn), ln - sn
  }'
done
