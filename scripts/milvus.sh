#!/usr/bin/env bash
# Milvus servers for Warden's tests and local runs, from PyPI wheels only (no Docker).
#
#   scripts/milvus.sh setup [lite|lite25|standalone|all] # venvs + wheels (cold ~25-40 s, warm <0.1 s); default all
#   scripts/milvus.sh start-lite DATA_DIR PORT       # Milvus Lite on 127.0.0.1:PORT; prints its PID
#   scripts/milvus.sh start-lite25 DATA_DIR PORT     # Milvus Lite 2.5.1 (C++) on 127.0.0.1:PORT; prints its PID
#   scripts/milvus.sh start-standalone DATA_DIR PORT # Milvus 2.3.5 engine on 127.0.0.1:PORT; prints its PID
#   scripts/milvus.sh stop PID                       # graceful stop of what a start-* printed
#                                                    # (SIGKILL after $MILVUS_STOP_TIMEOUT s, default 30)
# e.g.  pid=$(scripts/milvus.sh start-lite "$tmp/milvus" 19530); ...; scripts/milvus.sh stop "$pid"
#
# Both servers speak Milvus's gRPC API on PORT and keep their data in DATA_DIR (it persists across
# restarts; after a restart, load the collection again before searching). Each runs in its own process
# group (PID is the group's leader), logs to DATA_DIR/milvus-lite.log or DATA_DIR/milvus-standalone.log,
# and a start fails early, with the log's tail, when PORT is taken, or the server dies or is not ready
# in time (60 s Lite, 180 s standalone).
#
# - Milvus Lite 3.2.2 (a Python re-implementation of the gRPC API): ready in ~1 s, stops on SIGINT
#   in ~2 s (SIGTERM would kill it without its graceful shutdown). Supports HNSW, HNSW_SQ, IVF_FLAT,
#   IVF_SQ8, FLAT and AUTOINDEX; other index types (IVF_PQ, DISKANN, ...) are accepted and reported
#   "Finished" but fail in the background (traceback in the log). Full-text search works: a VARCHAR
#   field with enable_analyzer, a SPARSE_FLOAT_VECTOR field fed by a BM25 Function, index
#   SPARSE_INVERTED_INDEX with metric BM25 (scores come back negated: best first, most negative).
#   From milvus-sdk-rust, create indexes without waiting and poll describe_index: Lite answers
#   the waiting form with Unimplemented (src/knowledge/store/mod.rs does so; pymilvus's
#   synchronous create_index works).
# - Milvus Lite 2.5.1 (the C++ engine of Milvus 2.5 in one process, the last C++ release of Milvus
#   Lite): the wheel's `milvus_lite/lib/milvus DB_FILE ADDRESS LOG_LEVEL` binary, run here directly
#   (its Python `Server` wrapper imports pkg_resources, gone from setuptools 81). Ready in ~1 s,
#   stops on SIGINT in ~1-3 s; data in DATA_DIR/milvus.db. Full-text search (BM25) and hybrid search
#   work, and are fast (C++). But it refuses HNSW ("local mode only support FLAT IVF_FLAT AUTOINDEX")
#   and fails every filter expression, even `tenant == "x"`, on a collection that has a partition key
#   ("Invalid expr"): Warden finds both out by itself (src/knowledge/store/mod.rs) and falls back to AUTOINDEX
#   and a plain tenant field. GetVersion is unimplemented.
# - Milvus 2.3.5 standalone (the real C++/Go engine, via the `milvus` wheel's launcher): ready in ~3 s
#   on a fresh DATA_DIR (~270 MB of etcd/rocksmq files each), stops on SIGTERM in ~2 s, ~11 s when a
#   collection is loaded, and sometimes not within 30 s (then SIGKILL) despite
#   common.gracefulStopTimeout=10. No sparse vectors or BM25 (2.4/2.5 features): such a collection is
#   created, but inserting, indexing and searching it fail. Restarted on an old DATA_DIR it works, but
#   the start (up to ~1 min with another PORT) or its first DDL call (~25 s) waits for the previous
#   run's sessions to expire, and stops are slower: prefer a fresh DATA_DIR per test run.
#   Its gRPC ports listen on all interfaces (the *.ip=127.0.0.1 settings only set advertised addresses).
#   The wheel's `milvus-server --help` offers --proxy-port, --etcd-port and the internal gRPC ports,
#   but not the health/metrics port (hard-wired to "9091, or the next free port"); the embedded etcd
#   listens on 2379/2380 whatever --etcd-port says. This script sets all of them from PORT, so runs
#   with different PORTs do not collide (ports PORT..PORT+11 must be free):
#     PORT     proxy gRPC (clients)          PORT+1   health/metrics: GET /healthz says OK
#     PORT+2   embedded etcd, clients        PORT+3   embedded etcd, peers
#     PORT+4.. proxy internal, root/query/data/index coordinators and nodes (8 ports)
#   Its binaries (~250 MB) are unpacked once, by `setup`, into the cache; each DATA_DIR links to them.
#
# Everything lives under ${WARDEN_CACHE:-$HOME/.cache/warden}, outside the clone:
#   milvus-venv/             venv with milvus-lite, pymilvus (Lite needs it, undeclared) and milvus (~510 MB)
#   milvus-venv/.stamp-*     one stamp per pinned set of wheels: setup skips a set that is installed
#   milvus-lite25-venv/      venv with milvus-lite 2.5.1 alone (~180 MB): it cannot share milvus-venv,
#                            where the same package name is at 3.2.2
#   milvus-standalone/bin/   the 2.3.5 engine's binaries and libraries, unpacked from the wheel
#
# Recipe ("Milvus for tests and local use") (Milvus Lite 3.2.2; Milvus 2.3.5
# standalone: --proxy-port, every <role>.ip=127.0.0.1, common.gracefulStopTimeout=10; `set -m` so
# that a background server gets its own process group and does not ignore SIGINT).
set -euo pipefail

CACHE="${WARDEN_CACHE:-$HOME/.cache/warden}"
VENV="$CACHE/milvus-venv"
STANDALONE_HOME="$CACHE/milvus-standalone"

# Pinned sets of wheels; each is installed (and stamped) as one unit.
LITE_SET=(milvus-lite==3.2.2 pymilvus==3.0.2)
STANDALONE_SET=(milvus==2.3.5) # 2.3.9 has no Linux wheel

# A pinned set as a file-name part: "milvus-lite-3.2.2+pymilvus-3.0.2".
set_id() { local IFS=+ joined; joined="$*"; echo "${joined//==/-}"; }
LITE_STAMP="$VENV/.stamp-lite-$(set_id "${LITE_SET[@]}")"
LITE25_VENV="$CACHE/milvus-lite25-venv"
LITE25_SET=(milvus-lite==2.5.1)
LITE25_STAMP="$LITE25_VENV/.stamp-lite25-$(set_id "${LITE25_SET[@]}")"
STANDALONE_STAMP="$VENV/.stamp-standalone-$(set_id "${STANDALONE_SET[@]}")"
UNPACKED_STAMP="$STANDALONE_HOME/.unpacked-$(set_id "${STANDALONE_SET[@]}")"

LITE_READY_TIMEOUT=60
STANDALONE_READY_TIMEOUT=180
STOP_TIMEOUT="${MILVUS_STOP_TIMEOUT:-30}" # seconds from SIGINT/SIGTERM to SIGKILL

log() { echo "milvus.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# setup

# ensure_venv [VENV]: a working venv (re-created when its Python is gone, e.g. after a Python upgrade).
ensure_venv() {
  local venv="${1:-$VENV}"
  if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c '' 2>/dev/null; then
    return
  fi
  log "venv: creating $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
}

# install_set NAME STAMP SPEC... : pip-installs SPEC... into the venv that holds STAMP, unless
# STAMP is there.
install_set() {
  local name="$1" stamp="$2"; shift 2
  local venv
  venv=$(dirname "$stamp")
  if [[ -f "$stamp" ]]; then
    log "$name: installed ($*)"
    return
  fi
  log "$name: installing $*"
  "$venv/bin/pip" install --disable-pip-version-check --quiet "$@"
  rm -f "$venv/.stamp-$name-"* # an older pinned set of the same name
  touch "$stamp"
}

# The standalone engine's binaries, unpacked once from the wheel's .lzma files (the wheel's launcher
# would otherwise unpack ~250 MB into every data dir). Re-done when the wheel changes.
unpack_standalone() {
  if [[ -f "$UNPACKED_STAMP" ]]; then
    log "standalone: binaries unpacked ($STANDALONE_HOME/bin)"
    return
  fi
  log "standalone: unpacking binaries into $STANDALONE_HOME/bin"
  rm -rf "$STANDALONE_HOME"
  mkdir -p "$STANDALONE_HOME"
  "$VENV/bin/python" -c 'import sys, milvus; milvus._initialize_data_files(sys.argv[1])' "$STANDALONE_HOME"
  touch "$UNPACKED_STAMP"
}

setup() {
  local what="${1:-all}"
  case "$what" in lite | lite25 | standalone | all) ;; *) usage; exit 2 ;; esac
  mkdir -p "$CACHE"
  # One setup at a time per cache (e.g. parallel CI jobs on one machine).
  exec 9>"$CACHE/.milvus-setup.lock"
  flock 9
  if [[ $what == lite25 || $what == all ]]; then
    ensure_venv "$LITE25_VENV"
    install_set lite25 "$LITE25_STAMP" "${LITE25_SET[@]}"
  fi
  if [[ $what == lite25 ]]; then
    log "setup done ($what)"
    return
  fi
  ensure_venv
  if [[ $what != standalone ]]; then install_set lite "$LITE_STAMP" "${LITE_SET[@]}"; fi
  if [[ $what != lite ]]; then
    install_set standalone "$STANDALONE_STAMP" "${STANDALONE_SET[@]}"
    unpack_standalone
  fi
  log "setup done ($what)"
}

# ---------------------------------------------------------------------------------------------
# start / stop

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# check_port_arg NAME VALUE
check_port_arg() {
  if ! [[ "$2" =~ ^[0-9]+$ ]] || (($2 < 1 || $2 > 65535)); then die "$1 must be a TCP port, got '$2'"; fi
}

# require_free_ports PORT... : fail when something already listens on one of them.
require_free_ports() {
  local p
  for p in "$@"; do
    ! port_open "$p" || die "port $p on 127.0.0.1 is already in use"
  done
}

# The server's log tail, for a failure message.
fail_with_log() {
  local logfile="$1" msg="$2"
  log "$msg; last lines of $logfile:"
  tail -n 40 "$logfile" >&2 || true
  exit 1
}

# Background-start "$@" in its own process group; sets STARTED_PID. With job control on (set -m),
# bash gives a background job its own process group and, unlike without it, leaves SIGINT alone.
spawn() {
  local logfile="$1"; shift
  set -m
  "$@" </dev/null >>"$logfile" 2>&1 &
  STARTED_PID=$!
  set +m
  disown "$STARTED_PID" # no "Killed"/"Done" notices from this shell
}

# wait_ready PID TIMEOUT LOGFILE WHAT CHECK...: poll CHECK until it succeeds; fail (stopping the
# server) when the process dies or TIMEOUT seconds pass.
wait_ready() {
  local pid="$1" timeout="$2" logfile="$3" what="$4"; shift 4
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      fail_with_log "$logfile" "$what exited before it was ready"
    fi
    if ((SECONDS >= deadline)); then
      kill -KILL -- "-$pid" 2>/dev/null || true
      fail_with_log "$logfile" "$what not ready after ${timeout}s (killed)"
    fi
    sleep 0.2
  done
}

start_lite() {
  (($# == 2)) || { usage; exit 2; }
  local data="$1" port="$2"
  check_port_arg PORT "$port"
  [[ -f "$LITE_STAMP" ]] ||
    die "Milvus Lite is not installed: run '$0 setup lite' first"
  require_free_ports "$port"
  mkdir -p "$data"
  data=$(cd "$data" && pwd)
  local logfile="$data/milvus-lite.log"
  echo "=== $(date -Is) start-lite port $port" >>"$logfile"
  # `milvus-lite server ...`, with SIGINT (its graceful stop) handled even when our caller ignores it
  # (bash cannot un-ignore a signal it was started with ignored, e.g. under nohup or a background job).
  spawn "$logfile" "$VENV/bin/python" -c '
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from milvus_lite.cmdline import main
sys.argv[0] = "milvus-lite"
sys.exit(main())' server --data-dir "$data" --host 127.0.0.1 --port "$port"
  wait_ready "$STARTED_PID" "$LITE_READY_TIMEOUT" "$logfile" "Milvus Lite" port_open "$port"
  echo "$STARTED_PID"
}

start_lite25() {
  (($# == 2)) || { usage; exit 2; }
  local data="$1" port="$2"
  check_port_arg PORT "$port"
  [[ -f "$LITE25_STAMP" ]] ||
    die "Milvus Lite 2.5.1 is not installed: run '$0 setup lite25' first"
  require_free_ports "$port"
  mkdir -p "$data"
  data=$(cd "$data" && pwd)
  local logfile="$data/milvus-lite25.log" lib
  lib=$(echo "$LITE25_VENV"/lib/python3*/site-packages/milvus_lite/lib)
  [[ -x "$lib/milvus" ]] || die "no Milvus Lite binary at $lib/milvus: run '$0 setup lite25' again"
  echo "=== $(date -Is) start-lite25 port $port" >>"$logfile"
  # What the wheel's Server(db_file, address) runs: the binary with its libraries beside it, the
  # database file, the gRPC address and the log level.
  spawn "$logfile" env LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$lib/milvus" "$data/milvus.db" "127.0.0.1:$port" "${MILVUS_LITE25_LOG_LEVEL:-ERROR}"
  wait_ready "$STARTED_PID" "$LITE_READY_TIMEOUT" "$logfile" "Milvus Lite 2.5.1" port_open "$port"
  echo "$STARTED_PID"
}

# The wheel's launcher (`milvus-server`, i.e. milvus.main()) with four fixes, as a `python -c` program
# taking the health/metrics port first, then milvus-server's arguments:
# - it hard-wires the health/metrics port to "9091 or the next free one": take it from argv[1];
# - it probes each port by binding it without SO_REUSEADDR, so a port still in TIME_WAIT from a
#   server that just stopped looks busy, and it then silently moves that service to the next free port
#   (seen: health on PORT+3, clashing with etcd): probe with SO_REUSEADDR, like the Go servers bind;
# - a port that is really busy is an error, not a silent move;
# - it waits forever when the engine dies (its `running` only checks that it was started): make
#   `running` mean "the engine process is alive", so the launcher exits when the engine does.
# With --debug the launcher passes the engine's stdout/stderr through (to our log) instead of writing
# DATA_DIR/logs/milvus-std{out,err}.log, and logs the resolved config.
STANDALONE_LAUNCHER='
import socket, sys
import milvus

def try_bind_port(self, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None

resolve_any_port = milvus.MilvusServerConfig.resolve_port

def resolve_exact_port(self, port_start):
    port, sock = resolve_any_port(self, port_start)
    if port != port_start:
        if sock:
            sock.close()
        print(f"milvus launcher: port {port_start} is busy", file=sys.stderr, flush=True)
        raise SystemExit(1)
    return port, sock

milvus.MilvusServerConfig.try_bind_port = try_bind_port
milvus.MilvusServerConfig.resolve_port = resolve_exact_port
milvus.MilvusServer.running = property(lambda self: self.server_proc is not None and self.server_proc.poll() is None)
health_port = int(sys.argv.pop(1))
milvus.default_server.webservice_port = milvus.debug_server.webservice_port = health_port
sys.argv[0] = "milvus-server"
milvus.main()
'

healthz_ok() { curl -fsS --max-time 2 "http://127.0.0.1:$1/healthz" 2>/dev/null | grep -q OK; }

start_standalone() {
  (($# == 2)) || { usage; exit 2; }
  local data="$1" port="$2"
  check_port_arg PORT "$port"
  (( port + 11 <= 65535 )) || die "PORT+11 must be a TCP port"
  [[ -f "$STANDALONE_STAMP" && -f "$UNPACKED_STAMP" ]] ||
    die "Milvus standalone is not installed: run '$0 setup standalone' first"
  local health=$((port + 1)) etcd_client=$((port + 2)) etcd_peer=$((port + 3))
  require_free_ports $(seq "$port" $((port + 11)))
  mkdir -p "$data"
  data=$(cd "$data" && pwd)
  local logfile="$data/milvus-standalone.log"

  # The engine's binaries: shared from the cache (the launcher checks their md5 and leaves them).
  [[ -e "$data/bin" ]] || ln -s "$STANDALONE_HOME/bin" "$data/bin"

  # Embedded etcd: its listen ports are not in the launcher's config template; Milvus reads an etcd
  # config file named by etcd.config.path, which environment variable ETCD_CONFIG_PATH sets.
  mkdir -p "$data/configs"
  cat >"$data/configs/etcd-embed.yaml" <<EOF
name: default
listen-client-urls: http://127.0.0.1:$etcd_client
advertise-client-urls: http://127.0.0.1:$etcd_client
listen-peer-urls: http://127.0.0.1:$etcd_peer
initial-advertise-peer-urls: http://127.0.0.1:$etcd_peer
initial-cluster: default=http://127.0.0.1:$etcd_peer
EOF

  local args=(--data "$data" --proxy-port "$port" --etcd-port "$etcd_client"
    --proxy-internal-port $((port + 4)) --root-coord-port $((port + 5))
    --query-coord-port $((port + 6)) --query-node-port $((port + 7))
    --index-coord-port $((port + 8)) --index-node-port $((port + 9))
    --data-coord-port $((port + 10)) --data-node-port $((port + 11))
    --extra-config common.gracefulStopTimeout=10)
  local role
  for role in rootCoord proxy queryCoord queryNode indexNode dataCoord dataNode; do
    args+=(--extra-config "$role.ip=127.0.0.1")
  done

  echo "=== $(date -Is) start-standalone port $port (health $health, etcd $etcd_client/$etcd_peer)" >>"$logfile"
  spawn "$logfile" env ETCD_CONFIG_PATH="$data/configs/etcd-embed.yaml" \
    "$VENV/bin/python" -c "$STANDALONE_LAUNCHER" "$health" --debug "${args[@]}"
  wait_ready "$STARTED_PID" "$STANDALONE_READY_TIMEOUT" "$logfile" "Milvus standalone" healthz_ok "$health"
  echo "$STARTED_PID"
}

# group_members PGID: "PID COMMAND-LINE" of the live (not zombie) processes in that process group.
group_members() {
  ps -eo pid=,pgid=,stat=,args= | awk -v g="$1" '$2 == g && $3 !~ /^Z/ { $2 = ""; $3 = ""; print }'
}

stop() {
  (($# == 1)) || { usage; exit 2; }
  local pid="$1" members
  [[ "$pid" =~ ^[0-9]+$ ]] || die "PID must be a number, got '$pid'"
  members=$(group_members "$pid")
  if [[ -z "$members" ]]; then
    log "process group $pid: not running"
    return
  fi
  grep -q milvus <<<"$members" || die "process group $pid is not a Milvus server: $members"
  # Milvus Lite shuts down gracefully on SIGINT (SIGTERM kills it outright; 2.5.1 stops on SIGINT too);
  # the standalone engine on SIGTERM (the launcher's own SIGINT handler SIGKILLs the engine after 1 s).
  local sig=TERM
  if grep -q 'milvus[-_]lite' <<<"$members"; then sig=INT; fi
  kill -"$sig" -- "-$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while [[ -n "$(group_members "$pid")" ]]; do
    if ((SECONDS >= deadline)); then
      log "process group $pid: still running ${STOP_TIMEOUT}s after SIG$sig, sending SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || true
      sleep 0.5
      return
    fi
    sleep 0.2
  done
  log "process group $pid: stopped (SIG$sig)"
}

usage() {
  cat >&2 <<EOF
usage: $0 setup [lite|lite25|standalone|all]
       $0 start-lite DATA_DIR PORT
       $0 start-lite25 DATA_DIR PORT
       $0 start-standalone DATA_DIR PORT
       $0 stop PID
  setup             install Milvus Lite / the Milvus 2.3.5 standalone engine under $CACHE
  start-lite        start Milvus Lite on 127.0.0.1:PORT in the background; print its PID
  start-lite25      start Milvus Lite 2.5.1 (C++) on 127.0.0.1:PORT in the background; print its PID
  start-standalone  start Milvus 2.3.5 on 127.0.0.1:PORT (uses PORT..PORT+11; health on PORT+1); print its PID
  stop              stop that process group (SIGINT for Lite, SIGTERM for standalone; SIGKILL after ${STOP_TIMEOUT}s)
EOF
}

cmd="${1:-}"
(($# == 0)) || shift
case "$cmd" in
  setup) setup "$@" ;;
  start-lite) start_lite "$@" ;;
  start-lite25) start_lite25 "$@" ;;
  start-standalone) start_standalone "$@" ;;
  stop) stop "$@" ;;
  -h | --help | help) usage ;;
  *) usage; exit 2 ;;
esac
