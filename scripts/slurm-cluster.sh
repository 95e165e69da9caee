#!/usr/bin/env bash
# A one-node local Slurm cluster that SkyPilot 0.14.1 can launch on, for the
# end-to-end tests of providers/skypilot.py (tests/test_skypilot_e2e.py).
#
#   scripts/slurm-cluster.sh start    install (once), configure, start daemons
#   scripts/slurm-cluster.sh status   what runs, what Slurm sees
#   scripts/slurm-cluster.sh stop     stop exactly the daemons `start` started
#
# Recipe: ../shared/docs/SKYPILOT-OFFLINE.md section 3 (verified on this kind of
# machine). Layout:
#   partition `gpu`  (default, PriorityTier=10): on-demand
#   partition `spot` (PriorityTier=1, PreemptMode=REQUEUE): preemptible, taken back
#                    by any job in `gpu` (SkyPilot submits with --no-requeue, so a
#                    preempted job is killed: that is our "spot reclaim").
#   2 fake A10G GPUs (device files made with mknod, GRES type a10g).
#   sshd on 127.0.0.1:2222 for user `sky` (the "login node" SkyPilot drives).
#   Offline shims for the node's uv install (astral.sh is unreachable).
#
# Idempotent: a second `start` changes nothing that is already right and starts
# only what is not running. Daemons started here are recorded in
# $STATE/started.pids; `stop` kills only those pids (never by name).
#
# Env: FLEET_SLURM_STATE (default /var/lib/fleet-slurm), FLEET_PYTHON (the venv
# whose pip gets python-hostlist and uv; default: the checkout's .venv, which
# scripts/env.sh creates),
# FLEET_SLURM_SKIP_INSTALL=1 to skip apt/pip (already installed).
set -euo pipefail

STATE=${FLEET_SLURM_STATE:-/var/lib/fleet-slurm}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${FLEET_PYTHON:-$ROOT/.venv/bin/python}
SSH_PORT=2222
SKY_USER=sky
HOST=$(hostname -s)
NCPU=$(nproc)
PIDS=$STATE/started.pids
SLURM_CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
SSHD_CONF=$STATE/sshd_config
SSH_CLIENT_CONF=$STATE/slurm-ssh-config   # copy to $HOME/.slurm/config (the tests do)
KEY=$STATE/keys/sky_ed25519

log() { echo "[slurm-cluster] $*"; }
die() { echo "[slurm-cluster] error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (installs packages, starts slurmctld/slurmd/munged/sshd)"

install_packages() {
  [ "${FLEET_SLURM_SKIP_INSTALL:-0}" = 1 ] && return 0
  local need=()
  for p in slurm-wlm openssh-server munge rsync; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    # Wait for another apt (unattended upgrades, a parallel install) instead of failing.
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q "${need[@]}" >/dev/null
  fi
  # python-hostlist is SkyPilot's `slurm` extra; uv is copied to the node (shims below).
  [ -x "$PY" ] || die "FLEET_PYTHON=$PY is not an executable python"
  if ! "$PY" -c "import hostlist" 2>/dev/null || [ ! -x "$(dirname "$PY")/uv" ]; then
    log "pip install python-hostlist uv into $(dirname "$(dirname "$PY")")"
    "$PY" -m pip install -q python-hostlist uv
  fi
}

# "running" = a live process whose pid is in FILE and whose command matches BIN.
pid_alive() {  # pidfile binary
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -qa "$2" "/proc/$pid/cmdline"
}

record_started() {  # name pidfile
  local pid
  for _ in $(seq 1 50); do
    [ -s "$2" ] && break
    sleep 0.1
  done
  pid=$(cat "$2")
  echo "$1 $pid" >>"$PIDS"
  log "started $1 (pid $pid)"
}

setup_munge() {
  install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
  install -d -o munge -g munge -m 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  if pid_alive /run/munge/munged.pid munged; then
    log "munged already running"
  else
    # --force: the socket may be stale after an unclean stop.
    runuser -u munge -- /usr/sbin/munged --force
    record_started munged /run/munge/munged.pid
  fi
}

write_if_changed() {  # path (content on stdin)
  local tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then
    rm -f "$tmp"
    return 1
  fi
  install -m 0644 "$tmp" "$1"
  rm -f "$tmp"
  return 0
}

setup_slurm_conf() {
  install -d -m 0755 "$STATE" "$STATE/dev" "$STATE/ctld" "$STATE/slurmd" "$STATE/log" "$STATE/run" /etc/slurm
  # Fake GPUs: Slurm rejects count-only GRES for gpu, it wants device files.
  # 195 is the NVIDIA character-device major.
  for i in 0 1; do
    [ -c "$STATE/dev/nvidia$i" ] || mknod "$STATE/dev/nvidia$i" c 195 "$i"
  done
  CONF_CHANGED=0
  write_if_changed "$SLURM_CONF" <<EOF && CONF_CHANGED=1 || true
# Written by scripts/slurm-cluster.sh (fleet e2e tests). One node, two partitions.
ClusterName=fleetlocal
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# Short wait before a killed job's resources are reused (keeps tests fast).
KillWait=5
MinJobAge=60
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=20000 Gres=gpu:a10g:2 State=UNKNOWN
PartitionName=gpu Nodes=$HOST Default=YES PriorityTier=10 MaxTime=04:00:00 State=UP
PartitionName=spot Nodes=$HOST PriorityTier=1 PreemptMode=REQUEUE MaxTime=04:00:00 State=UP
EOF
  write_if_changed "$GRES_CONF" <<EOF && CONF_CHANGED=1 || true
NodeName=$HOST Name=gpu Type=a10g File=$STATE/dev/nvidia[0-1]
EOF
}

start_slurm() {
  if pid_alive "$STATE/run/slurmctld.pid" slurmctld; then
    if [ "$CONF_CHANGED" = 1 ]; then log "slurm.conf changed: scontrol reconfigure"; scontrol reconfigure || true; fi
    log "slurmctld already running"
  else
    /usr/sbin/slurmctld -i
    record_started slurmctld "$STATE/run/slurmctld.pid"
  fi
  if pid_alive "$STATE/run/slurmd.pid" slurmd; then
    log "slurmd already running"
  else
    /usr/sbin/slurmd
    record_started slurmd "$STATE/run/slurmd.pid"
  fi
  # Wait until the node takes jobs.
  local st=""
  for _ in $(seq 1 60); do
    st=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1 || true)
    case "$st" in idle*|mixed*|allocated*) break ;; esac
    sleep 0.5
  done
  case "$st" in
    idle*|mixed*|allocated*) ;;
    down*|drain*) scontrol update NodeName="$HOST" State=RESUME || true ;;
    *) die "node $HOST not ready (state '$st'); see $STATE/log/slurmd.log and slurmctld.log" ;;
  esac
}

setup_user_and_ssh() {
  id "$SKY_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$SKY_USER"
  # useradd leaves the account locked ("!"), which sshd without PAM refuses even
  # for key logins; "*" = no password, not locked.
  if getent shadow "$SKY_USER" | cut -d: -f2 | grep -q '^!'; then usermod -p '*' "$SKY_USER"; fi
  local home
  home=$(getent passwd "$SKY_USER" | cut -d: -f6)
  install -d -m 0700 "$STATE/keys"
  [ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N "" -C "fleet-slurm" -f "$KEY"
  install -d -o "$SKY_USER" -g "$SKY_USER" -m 0700 "$home/.ssh"
  touch "$home/.ssh/authorized_keys"
  grep -qF "$(cut -d' ' -f2 "$KEY.pub")" "$home/.ssh/authorized_keys" || cat "$KEY.pub" >>"$home/.ssh/authorized_keys"
  chown "$SKY_USER:$SKY_USER" "$home/.ssh/authorized_keys"
  chmod 0600 "$home/.ssh/authorized_keys"

  ssh-keygen -A >/dev/null  # host keys, if missing
  install -d -m 0755 /run/sshd
  local sshd_changed=0
  write_if_changed "$SSHD_CONF" <<EOF && sshd_changed=1 || true
# Written by scripts/slurm-cluster.sh: loopback-only sshd for the Slurm login node.
Port $SSH_PORT
ListenAddress 127.0.0.1
PidFile $STATE/run/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
AllowUsers $SKY_USER
UsePAM no
MaxStartups 50:30:100
MaxSessions 50
# Reap sessions whose client died (e.g. a stopped SkyPilot API server's ssh).
ClientAliveInterval 15
ClientAliveCountMax 2
Subsystem sftp internal-sftp
EOF
  if pid_alive "$STATE/run/sshd.pid" sshd; then
    if [ "$sshd_changed" = 1 ]; then kill -HUP "$(cat "$STATE/run/sshd.pid")"; log "sshd config changed: reloaded"; fi
    log "sshd already running on 127.0.0.1:$SSH_PORT"
  else
    /usr/sbin/sshd -f "$SSHD_CONF"
    record_started sshd "$STATE/run/sshd.pid"
  fi

  write_if_changed "$SSH_CLIENT_CONF" <<EOF || true
Host localcluster
  HostName 127.0.0.1
  Port $SSH_PORT
  User $SKY_USER
  IdentityFile $KEY
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
EOF
  # The invoking user's SkyPilot config (tests use their own temp HOME and copy
  # $SSH_CLIENT_CONF there).
  install -d -m 0700 "$HOME/.slurm"
  if [ ! -f "$HOME/.slurm/config" ] || ! grep -q "^Host localcluster" "$HOME/.slurm/config"; then
    cat "$SSH_CLIENT_CONF" >>"$HOME/.slurm/config"
  fi
}

setup_offline_shims() {
  # The node installs SkyPilot's runtime with uv fetched by
  #   curl -LsSf https://astral.sh/uv/install.sh | UV_INSTALL_DIR="$HOME/.local/bin" sh
  # astral.sh is unreachable here. A `curl` shim answers that URL with a script
  # that installs a `uv` wrapper; the wrapper runs the uv from PyPI and rewrites
  # `--python 3.10` (SkyPilot's pin) to 3.11, the only Python Debian 12 has.
  local home shim uvbin
  home=$(getent passwd "$SKY_USER" | cut -d: -f6)
  shim=$STATE/shims
  uvbin=$(dirname "$PY")/uv
  [ -x "$uvbin" ] || die "no uv at $uvbin (pip install uv into the venv of $PY)"
  install -d -m 0755 "$shim" "$shim/bin"
  install -m 0755 "$uvbin" "$shim/uv-real"
  write_if_changed "$shim/uv-wrapper" <<'EOF' || true
#!/bin/sh
# fleet offline shim: SkyPilot pins --python 3.10; Debian 12 ships 3.11 only.
REAL=__SHIM__/uv-real
n=$#; i=0; prev=""
for a in "$@"; do
  i=$((i+1))
  if [ "$prev" = "--python" ] && [ "$a" = "3.10" ]; then a=3.11; fi
  case "$a" in --python=3.10) a=--python=3.11 ;; esac
  set -- "$@" "$a"; prev="$a"
done
shift "$n"
exec "$REAL" "$@"
EOF
  sed -i "s#__SHIM__#$shim#" "$shim/uv-wrapper"
  chmod 0755 "$shim/uv-wrapper"
  write_if_changed "$shim/uv-install.sh" <<EOF || true
#!/bin/sh
# fleet offline stand-in for https://astral.sh/uv/install.sh
set -e
dir="\${UV_INSTALL_DIR:-\$HOME/.local/bin}"
mkdir -p "\$dir"
cp $shim/uv-wrapper "\$dir/uv"
chmod 0755 "\$dir/uv"
echo "installed uv (offline shim) to \$dir/uv"
EOF
  write_if_changed "$shim/bin/curl" <<EOF || true
#!/bin/sh
# fleet offline shim: answer astral.sh's uv installer locally, pass all else to curl.
for a in "\$@"; do
  case "\$a" in
    https://astral.sh/uv/install.sh|https://astral.sh/uv/*/install.sh) exec cat $shim/uv-install.sh ;;
  esac
done
exec /usr/bin/curl "\$@"
EOF
  chmod 0755 "$shim/bin/curl" "$shim/uv-install.sh"
  local marker="# >>> fleet offline shims >>>"
  if ! grep -qF "$marker" "$home/.profile" 2>/dev/null; then
    cat >>"$home/.profile" <<EOF
$marker
export PATH="$shim/bin:\$PATH"
export UV_NATIVE_TLS=true
export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
export UV_CACHE_DIR="$home/.cache/uv"
# <<< fleet offline shims <<<
EOF
    chown "$SKY_USER:$SKY_USER" "$home/.profile"
  fi
  # bash --login reads .bash_profile first when it exists; make sure .profile is read.
  if [ -f "$home/.bash_profile" ] && ! grep -q "\.profile" "$home/.bash_profile"; then
    echo '. "$HOME/.profile"' >>"$home/.bash_profile"
  fi
}

cmd_start() {
  install_packages
  install -d -m 0755 "$STATE"
  touch "$PIDS"
  setup_munge
  setup_slurm_conf
  start_slurm
  setup_user_and_ssh
  setup_offline_shims
  # Check the path SkyPilot takes: ssh as sky, then a Slurm command.
  ssh -F "$SSH_CLIENT_CONF" -o BatchMode=yes -o ConnectTimeout=5 -o LogLevel=ERROR localcluster 'bash --login -c "command -v curl && sinfo -h -o %P"' >/dev/null \
    || die "ssh to sky@127.0.0.1:$SSH_PORT or sinfo failed"
  log "ready: ssh config $SSH_CLIENT_CONF (Host localcluster), partitions: $(sinfo -h -o %P | tr '\n' ' ')"
}

cmd_stop() {
  [ -f "$PIDS" ] || { log "nothing recorded as started"; return 0; }
  # Stop in reverse start order; kill only recorded pids that still run the same binary.
  tac "$PIDS" | while read -r name pid; do
    [ -n "${pid:-}" ] || continue
    if [ -d "/proc/$pid" ] && grep -qa "$name" "/proc/$pid/cmdline"; then
      if [ "$name" = slurmctld ]; then
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ' || true)
        [ -n "${jobs// /}" ] && log "warning: jobs still queued/running: $jobs (not cancelled)"
      fi
      if [ "$name" = sshd ]; then
        # Sessions forked by this sshd (e.g. SkyPilot's ControlPersist masters) outlive the
        # listener; they are ours too. Children by parent pid, never by name.
        for child in $(pgrep -P "$pid" || true); do kill "$child" 2>/dev/null || true; done
      fi
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
      [ -d "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null || true
      log "stopped $name (pid $pid)"
    fi
  done
  rm -f "$PIDS"
}

cmd_status() {
  local rc=0
  for spec in "munged:/run/munge/munged.pid" "slurmctld:$STATE/run/slurmctld.pid" "slurmd:$STATE/run/slurmd.pid" "sshd:$STATE/run/sshd.pid"; do
    name=${spec%%:*}; pf=${spec#*:}
    if pid_alive "$pf" "$name"; then echo "$name: running (pid $(cat "$pf"))"; else echo "$name: not running"; rc=1; fi
  done
  if [ $rc = 0 ]; then sinfo; squeue; fi
  return $rc
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
