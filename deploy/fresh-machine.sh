#!/usr/bin/env bash
# Checks the README's two commands on a brand-new Debian 12, as a new user
# would run them: a minimal Debian 12 (bookworm) root filesystem made with
# debootstrap, run with podman as its own machine (own loopback, NAT to the
# package registries, nothing of this machine's services visible), with only
# what a machine "with the Rust toolchain" has: this machine's toolchain
# (mounted read-only, with a container-local CARGO_HOME) and the packages
# build-essential ca-certificates curl git pkg-config. Inside it, in a clean
# clone of the repository's committed HEAD:
#   1. deploy/run.sh in the background until ingest is ready, the README's
#      curl, its answer compared with the documented one, then SIGTERM;
#   2. deploy/test.sh;
# then a summary with exit codes and durations.
#
#   deploy/fresh-machine.sh            # the check (~20-40 min on two cores)
#   deploy/fresh-machine.sh --prepare  # only build the cached base image
#
# Not part of CI (too slow, and it needs root for debootstrap and podman).
# Cached between runs under $DLR_FRESH_CACHE (default /var/cache/dlr-fresh):
# the debootstrap tarball and the image made from it (packages above
# installed). The checked machine is a new container from that image each
# run; the logs of each run stay in $DLR_FRESH_CACHE/runs/<time>/.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${DLR_FRESH_CACHE:-/var/cache/dlr-fresh}
suite=bookworm
machine_packages=(build-essential ca-certificates curl git pkg-config)
prepare_only=false
case "${1:-}" in
  --prepare) prepare_only=true ;;
  "") ;;
  *) echo "usage: deploy/fresh-machine.sh [--prepare]" >&2; exit 2 ;;
esac

say() { printf '%s fresh-machine: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "fresh-machine: needs root (debootstrap, podman with its own storage)" >&2
  exit 2
fi

missing=()
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v slirp4netns >/dev/null 2>&1 || missing+=(slirp4netns)
[ -x /usr/libexec/podman/catatonit ] || missing+=(catatonit)
if ((${#missing[@]})); then
  say "installing ${missing[*]} from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The Debian mirror this machine's apt uses (deb822 .sources or sources.list).
mirror() {
  local file
  for file in /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    awk -v suite="$suite" '
      /^[[:space:]]*$/ { if (uri != "" && found) { print uri; exit } uri = ""; found = 0; next }
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) found = 1 }
      END { if (uri != "" && found) print uri }' "$file" | head -n 1
  done
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$file" ] || continue
    sed -n -E "s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+${suite}[[:space:]].*/\2/p" "$file"
  done
}
mirror=$(mirror | grep -v -- '-security' | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}

# Its own storage (vfs: no overlay mounts needed), runc (crun fails on this
# machine's cgroups), and limits within this shell's: podman's defaults are
# higher and runc may not raise them (here it cannot set more than 32768
# processes either).
podman=(podman --root "$cache/storage" --runroot "$cache/run" --storage-driver vfs --runtime runc)
nproc=$(ulimit -Hu)
if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
ulimits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=$nproc:$nproc")
mkdir -p "$cache"
# The container's release and debug builds take about 10 GB under $cache.
free_gb=$(df --output=avail -BG "$cache" | tail -n 1 | tr -dc 0-9)
if [ "$free_gb" -lt 12 ]; then
  echo "fresh-machine: only ${free_gb} GB free under $cache; the check needs about 12 GB" >&2
  exit 1
fi

# 1. The root filesystem: debootstrap once, kept as a tarball.
tarball=$cache/debian-$suite-minbase.tar
if [ ! -s "$tarball" ]; then
  say "debootstrap $suite (minbase) from $mirror"
  rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
  chmod 755 "$rootfs" # it becomes the image's /: mktemp's 700 locks out every user but root
  debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 || {
    tail -n 20 "$cache/debootstrap.log" >&2
    rm -rf "$rootfs"
    exit 1
  }
  tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$rootfs"
fi

# 2. The fresh machine: that filesystem plus the packages a machine with the
# Rust toolchain has. Rebuilt when the tarball or the package list changes.
key=$( (stat -c %Y "$tarball"; echo "${machine_packages[*]}") | sha256sum | cut -c1-12)
image=localhost/dlr-fresh:$suite-$key
if ! "${podman[@]}" image exists "$image"; then
  say "making the base image $image"
  "${podman[@]}" image exists "localhost/dlr-fresh-rootfs:$suite" &&
    "${podman[@]}" rmi -f "localhost/dlr-fresh-rootfs:$suite" >/dev/null
  "${podman[@]}" import "$tarball" "localhost/dlr-fresh-rootfs:$suite" >/dev/null
  "${podman[@]}" rm -f dlr-fresh-base >/dev/null 2>&1 || true
  "${podman[@]}" run --name dlr-fresh-base --network slirp4netns "${ulimits[@]}" \
    "localhost/dlr-fresh-rootfs:$suite" sh -c "
      set -e
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${machine_packages[*]} >/dev/null
      apt-get clean
      rm -rf /var/lib/apt/lists/*"
  "${podman[@]}" commit -q dlr-fresh-base "$image" >/dev/null
  "${podman[@]}" rm dlr-fresh-base >/dev/null
  "${podman[@]}" rmi "localhost/dlr-fresh-rootfs:$suite" >/dev/null
fi
if $prepare_only; then
  say "base image ready: $image"
  exit 0
fi

# 3. What goes in: the committed HEAD, the CA certificates this machine
# trusts (one file each, for update-ca-certificates), the check itself.
run_dir=$cache/runs/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$run_dir/in/ca" "$run_dir/out"
git -C "$repo" bundle create "$run_dir/in/dlr.bundle" HEAD 2>/dev/null
commit=$(git -C "$repo" rev-parse --short HEAD)
awk -v dir="$run_dir/in/ca" '
  /-----BEGIN CERTIFICATE-----/ { n++; file = sprintf("%s/host-%04d.crt", dir, n) }
  file { print > file }
  /-----END CERTIFICATE-----/ { close(file); file = "" }' /etc/ssl/certs/ca-certificates.crt
toolchain=$(rustc --print sysroot)

cat >"$run_dir/in/check.sh" <<'CHECK'
#!/bin/bash
# Runs inside the fresh machine. Every step's log goes to /out.
set -u
export PATH=/opt/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export CARGO_HOME=/root/.cargo HOME=/root
summary=/out/summary.txt
failed=0
# row STEP RESULT DETAIL: RESULT is ok, fail or an exit code.
row() {
  printf '%-34s %-6s %s\n' "$1" "$2" "$3" | tee -a "$summary"
  case "$2" in ok | 0) ;; *) failed=1 ;; esac
}
elapsed() { local s=$(($(date +%s) - $1)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
# Running = a /proc entry whose state is not Z (zombie) or X (dead).
running() {
  local state
  state=$(sed -E 's/.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

cp /in/ca/*.crt /usr/local/share/ca-certificates/
update-ca-certificates >/dev/null 2>&1
git clone -q /in/dlr.bundle /root/dlr 2>/dev/null || { row "git clone" fail -; exit 1; }
cd /root/dlr
{
  echo "machine: $(. /etc/os-release; echo "$PRETTY_NAME"), $(nproc) cores, commit $(git rev-parse --short HEAD)"
  echo "toolchain: $(rustc --version)"
  echo "packages before the commands: $(dpkg-query -W -f '${binary:Package}\n' | wc -l)"
  printf '%-34s %-6s %s\n' step exit duration
} | tee "$summary"

# 1. deploy/run.sh until ingest answers /readyz, then the README's curl.
t0=$(date +%s)
deploy/run.sh >/out/run.log 2>&1 &
run_pid=$!
ready=false
for _ in $(seq 1 3600); do
  if curl -sf -o /dev/null http://127.0.0.1:8080/readyz; then ready=true; break; fi
  running "$run_pid" || break
  sleep 1
done
if $ready; then row "deploy/run.sh until ready" ok "$(elapsed "$t0")"; else row "deploy/run.sh until ready" fail "$(elapsed "$t0")"; fi

url=$(grep -m1 -o "^curl -i 'http://127.0.0.1:8080/dlr/vonage?[^']*'" README.md | sed "s/^curl -i '//; s/'\$//")
expected_status=$(grep -A2 -F "curl -i '$url'" README.md | sed -n '2s/^# //p' | tr -d '\r')
expected_body=$(grep -A2 -F "curl -i '$url'" README.md | sed -n '3s/^# //p')
curl -s -i "$url" >/out/curl.txt 2>&1
status=$(head -n 1 /out/curl.txt | tr -d '\r')
body=$(tail -n 1 /out/curl.txt)
if [ -n "$url" ] && [ "$status" = "$expected_status" ] && [ "$body" = "$expected_body" ]; then
  row "README curl = documented answer" ok "$status $body"
else
  row "README curl = documented answer" fail "got '$status' '$body', README says '$expected_status' '$expected_body'"
fi

t1=$(date +%s)
kill -TERM "$run_pid" 2>/dev/null
wait "$run_pid"
rc=$?
row "deploy/run.sh SIGTERM -> exit" "$rc" "$(elapsed "$t1") to stop; $(elapsed "$t0") in all"

# 2. The test command.
t2=$(date +%s)
deploy/test.sh >/out/test.log 2>&1
rc=$?
row "deploy/test.sh" "$rc" "$(elapsed "$t2")"
{
  awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($i ~ /^(passed|failed|ignored);?$/) n[$i] += $(i - 1) }
    END { printf "  cargo test: %d passed, %d failed, %d ignored (both phases)\n", n["passed;"], n["failed;"], n["ignored;"] }' /out/test.log
  grep -E '^checks: |^RESULT: |^FAIL|acknowledged receipts missing' /out/test.log | sed 's/^/  /' | head -n 10
} | tee -a "$summary"
exit "$failed"
CHECK
chmod +x "$run_dir/in/check.sh"

say "checking commit $commit in a new container from $image (logs: $run_dir/out)"
start=$(date +%s)
set +e
"${podman[@]}" run --rm --init --network slirp4netns "${ulimits[@]}" \
  --hostname fresh-machine \
  -v "$toolchain:/opt/rust:ro" \
  -v "$run_dir/in:/in:ro" \
  -v "$run_dir/out:/out" \
  "$image" /in/check.sh
rc=$?
set -e
total=$(($(date +%s) - start))
printf '\n== fresh-machine summary (%s, logs in %s)\n' "$(date -u +%FT%TZ)" "$run_dir/out"
cat "$run_dir/out/summary.txt" 2>/dev/null || echo "(no summary: the container exited $rc)"
printf 'container exit %s, %dm%02ds in all\n' "$rc" $((total / 60)) $((total % 60))
# The container exits non-zero when any step failed.
exit "$rc"
