#!/usr/bin/env bash
# Redis for Warden's tests and local runs of the shared limits store (`[limits] store = "redis"`),
# from Debian's redis-server package (installed with apt-get when missing).
#
#   scripts/redis.sh setup              # installs redis-server (and openssl) unless there (warm: instant)
#   scripts/redis.sh paths              # prints REDIS_SERVER_BIN=... for `eval`
#   scripts/redis.sh start DIR PORT     # redis-server on 127.0.0.1:PORT, no persistence; prints its PID
#   scripts/redis.sh stop PID           # stops what `start` printed
#
# The server keeps nothing on disk (no RDB snapshots, no AOF), logs to DIR/redis.log, and a start
# fails early, with the log's tail, when PORT is taken or it does not answer PING within 10 s.
set -euo pipefail

log() { echo "redis.sh: $*" >&2; }
die() { log "$*"; exit 1; }
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; }

source "$(dirname "$0")/apt.sh"

server_bin() { command -v redis-server || true; }

# redis-server and redis-cli, and openssl (the TLS test makes its certificates with it).
setup() {
  local missing=()
  [[ -n "$(server_bin)" && -n "$(command -v redis-cli || true)" ]] || missing+=(redis-server)
  command -v openssl >/dev/null || missing+=(openssl)
  ((${#missing[@]} == 0)) && return
  log "installing ${missing[*]} with apt-get"
  apt_install "${missing[@]}"
  [[ -n "$(server_bin)" ]] || die "redis-server is still missing after apt-get"
}

start() {
  (($# == 2)) || { usage; exit 2; }
  local dir="$1" port="$2" bin
  [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
  bin=$(server_bin)
  [[ -n "$bin" ]] || die "redis-server is not installed: run scripts/redis.sh setup"
  mkdir -p "$dir"
  # setsid: its own process group, so a caller's Ctrl-C or job control does not reach it.
  setsid "$bin" --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$dir" \
    --logfile "$dir/redis.log" --daemonize no </dev/null >/dev/null 2>&1 &
  local pid=$!
  local deadline=$((SECONDS + 10))
  until redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; do
    if ! kill -0 "$pid" 2>/dev/null || ((SECONDS > deadline)); then
      kill "$pid" 2>/dev/null || true
      tail -n 20 "$dir/redis.log" >&2 2>/dev/null || true
      die "redis-server on port $port did not start"
    fi
    sleep 0.05
  done
  echo "$pid"
}

stop() {
  (($# == 1)) || { usage; exit 2; }
  local pid="$1"
  [[ "$pid" =~ ^[0-9]+$ ]] || die "PID must be a number, got '$pid'"
  kill -0 "$pid" 2>/dev/null || return 0
  grep -q redis-server "/proc/$pid/cmdline" 2>/dev/null || die "process $pid is not a redis-server"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 10))
  while kill -0 "$pid" 2>/dev/null; do
    ((SECONDS > deadline)) && { kill -KILL "$pid" 2>/dev/null || true; break; }
    sleep 0.05
  done
}

command=${1:-help}
shift || true
case "$command" in
  setup) setup ;;
  paths) echo "REDIS_SERVER_BIN=$(server_bin)" ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  -h | --help | help) usage ;;
  *) usage; exit 2 ;;
esac
