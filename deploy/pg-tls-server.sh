#!/usr/bin/env bash
# A private PostgreSQL cluster that accepts only TLS, for the worker's TLS test
# (tests/postgres_tls.rs calls it; idempotent, safe to run concurrently).
#
#   deploy/pg-tls-server.sh [start]   # start (or find running) and print its settings
#   deploy/pg-tls-server.sh stop      # stop it and remove its directory
#
# It never touches the machine's main PostgreSQL on 5432: its own data directory,
# port (PG_TLS_PORT, default 55432) and socket directory, under PG_TLS_DIR
# (default /tmp/dlr-pg-tls). A throw-away CA signs the server certificate for
# `localhost` and 127.0.0.1, so clients can use sslmode=verify-full with
# sslrootcert=$PG_TLS_DIR/ca.crt; a second, unrelated CA ($PG_TLS_DIR/wrong-ca.crt)
# lets tests check that verification really happens. pg_hba.conf rejects
# plaintext connections, so any session that works is a TLS session.
# Prints, on success: PG_TLS_PORT=... PG_TLS_CA=... PG_TLS_WRONG_CA=...
set -euo pipefail

dir=${PG_TLS_DIR:-/tmp/dlr-pg-tls}
port=${PG_TLS_PORT:-55432}
action=${1:-start}

bindir=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1)
if [[ -z "$bindir" ]] && command -v pg_config >/dev/null; then
    bindir=$(pg_config --bindir)
fi
if [[ -z "$bindir" || ! -x "$bindir/initdb" ]]; then
    echo "PostgreSQL server binaries not found (apt-get install postgresql; deploy/services.sh does)" >&2
    exit 1
fi

# initdb and postgres refuse to run as root: run them as `postgres` then.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

mkdir -p "$dir"
exec 9>"$dir/lock"
flock 9

if [[ $action == stop ]]; then
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast stop >/dev/null
    fi
    rm -rf "$dir"
    exit 0
fi
if [[ $action != start ]]; then
    echo "usage: $0 [start|stop]" >&2
    exit 2
fi

report() {
    echo "PG_TLS_PORT=$port"
    echo "PG_TLS_CA=$dir/ca.crt"
    echo "PG_TLS_WRONG_CA=$dir/wrong-ca.crt"
}

if [[ -f "$dir/data/PG_VERSION" ]] && as_owner "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    for _ in $(seq 50); do
        if "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port"; then
            report
            exit 0
        fi
        sleep 0.2
    done
    echo "the server in $dir/data runs but does not answer on port $port; see $dir/server.log" >&2
    exit 1
fi

if [[ ! -f "$dir/server.key" ]]; then
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=dlr test CA" \
        -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=dlr unrelated CA" \
        -keyout wrong-ca.key -out wrong-ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile server.ext -out server.crt 2>/dev/null
    chmod 600 server.key ca.key wrong-ca.key
    cd - >/dev/null
fi
if [[ $(id -u) -eq 0 ]]; then
    chown postgres: "$dir" "$dir/server.key" "$dir/server.crt"
fi

if [[ ! -f "$dir/data/PG_VERSION" ]]; then
    rm -rf "$dir/data"
    as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
    cat >>"$dir/data/postgresql.conf" <<EOF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
ssl = on
ssl_cert_file = '$dir/server.crt'
ssl_key_file = '$dir/server.key'
fsync = off
EOF
    cat >"$dir/data/pg_hba.conf" <<EOF
# TLS only: a plaintext connection is refused, so a working session proves TLS.
local     all all                trust
hostssl   all all 127.0.0.1/32   trust
hostnossl all all 0.0.0.0/0      reject
EOF
fi
# fd 9 (the lock) must not be inherited by the server, or it would hold the lock forever.
as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start >/dev/null 9>&-
report
