#!/usr/bin/env bash
# Makes sure the services the project needs answer on this machine:
#   deploy/services.sh rabbitmq [postgres]
# A service that already listens on its port is used as it is. Otherwise it
# is installed from Debian's packages (if missing) and started. Needs root or
# sudo only in that second case.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  echo "services: installing $* from Debian's packages" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

wait_port() {
  local port=$1 name=$2 seconds=$3
  for _ in $(seq 1 "$seconds"); do
    port_open "$port" && return 0
    sleep 1
  done
  echo "services: $name did not start listening on port $port within ${seconds}s" >&2
  return 1
}

ensure_rabbitmq() {
  if port_open 5672; then
    echo "services: RabbitMQ answers on 127.0.0.1:5672"
    return 0
  fi
  command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
  # The package may have started it already (systemd); otherwise start it.
  if ! port_open 5672; then
    as_root rabbitmq-server -detached >/dev/null 2>&1 || true
  fi
  if command -v rabbitmqctl >/dev/null 2>&1; then
    as_root rabbitmqctl --timeout 120 await_startup >/dev/null 2>&1 || true
  fi
  wait_port 5672 RabbitMQ 120
  echo "services: RabbitMQ started on 127.0.0.1:5672"
}

ensure_postgres() {
  if port_open 5432; then
    echo "services: PostgreSQL answers on 127.0.0.1:5432"
    return 0
  fi
  command -v pg_ctlcluster >/dev/null 2>&1 || apt_install postgresql
  local version hba
  version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  # A development/CI database: trust connections from this machine only,
  # as the machines this project targets are set up.
  if ! as_root grep -q 'dlr-local-trust' "$hba"; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust # dlr-local-trust' "$hba"
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
    || as_root pg_ctlcluster "$version" main start
  wait_port 5432 PostgreSQL 60
  as_root su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname = 'test'\" | grep -q 1 || createdb test"
  echo "services: PostgreSQL started on 127.0.0.1:5432 (database test)"
}

for service in "$@"; do
  case "$service" in
    rabbitmq) ensure_rabbitmq ;;
    postgres) ensure_postgres ;;
    *) echo "services: unknown service $service (rabbitmq, postgres)" >&2; exit 2 ;;
  esac
done
