#!/usr/bin/env bash
# Makes sure PostgreSQL and RabbitMQ answer on 127.0.0.1 and the Rust tools are present:
# found running, or started, or installed with apt (as root) when missing. Sourced by
# deploy/demo.sh, deploy/test.sh and .ci/run; safe to run again and again.
set -euo pipefail

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port name seconds
  local i
  for ((i = 0; i < $3 * 2; i++)); do
    port_open "$1" && return 0
    sleep 0.5
  done
  echo "error: $2 did not start listening on 127.0.0.1:$1 within $3 s" >&2
  return 1
}

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "error: $* missing and not root: install them with apt-get (sudo apt-get install -y $*)" >&2
    return 1
  fi
  log "installing $* with apt"
  [ -n "${WARREN_APT_UPDATED:-}" ] || { apt-get update -qq; WARREN_APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if port_open 5432; then log "PostgreSQL is running"; return 0; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
    # A fresh Debian cluster asks TCP clients for a password: give postgres the one the
    # demo's, the tests' and the benchmark's default URLs carry (postgres:postgres).
    # Trust-auth servers ignore it.
    local fresh=1
  fi
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start || true
  wait_port 5432 PostgreSQL 60
  if [ -n "${fresh:-}" ]; then
    su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
  fi
}

ensure_rabbitmq() {
  if port_open 5672; then log "RabbitMQ is running"; return 0; fi
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  log "starting RabbitMQ"
  rabbitmq-server -detached || true
  wait_port 5672 RabbitMQ 120
}

# The management plugin serves the HTTP API that `warren queues` reads unacked counts and
# rates from (WARREN_RABBITMQ_API_URL); the CLI tests check both sides of it.
ensure_rabbitmq_management() {
  if port_open 15672; then log "RabbitMQ management API is up"; return 0; fi
  log "enabling the RabbitMQ management plugin"
  rabbitmq-plugins enable rabbitmq_management >/dev/null
  wait_port 15672 "RabbitMQ management API" 60
}

ensure_rust() {
  if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null; then
    command -v curl >/dev/null || apt_install curl ca-certificates
    command -v cc >/dev/null || apt_install build-essential
    log "installing Rust with rustup"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy >/dev/null
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
}

ensure_nextest() {
  command -v cargo-nextest >/dev/null && return 0
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest >/dev/null
}

# The tests check deploy/systemd's unit file with `systemd-analyze verify`.
ensure_systemd_analyze() {
  command -v systemd-analyze >/dev/null || apt_install systemd
}

ensure_services() {
  ensure_systemd_analyze
  ensure_postgres
  ensure_rabbitmq
  ensure_rabbitmq_management
}
