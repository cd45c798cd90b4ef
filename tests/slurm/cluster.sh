#!/bin/bash
# A real single-node Slurm cluster for tests (Debian's slurmctld + slurmd 22.05 and munge; no systemd,
# no accounting database). See /work/shared/ENVIRONMENT.md, "A real single-node Slurm".
#
#   tests/slurm/cluster.sh start DIR    start munged (if none answers), slurmctld and slurmd; wait
#                                       until the node is idle; print `export SLURM_CONF=DIR/slurm.conf`
#   tests/slurm/cluster.sh stop DIR     stop exactly the daemons that `start DIR` started
#   tests/slurm/cluster.sh status DIR   0 if that cluster answers and its node is up
#
# Everything Slurm writes (slurm.conf, state, spool, logs, pid files) lives in DIR. The only things
# outside it: munge (/run/munge owned by munge; /etc/munge/munge.key created only if missing; munged
# started as user munge only if no munged answers, and then stopped again by `stop`).
# The daemons listen on free TCP ports chosen at start, so two clusters (two DIRs) can run at once.
#
# Exit status: 0 done; 77 cannot run here (Slurm or munge not installed, or not root) - callers treat
# 77 as "skipped" unless they require Slurm; 1 any other failure (the daemon logs are printed).
# Environment: SLURM_START_TIMEOUT (seconds to wait for the idle node, default 60),
#              SLURM_CLUSTER_CRED_EXPIRE (credential lifetime = requeue delay, default 15 s),
#              SLURM_CLUSTER_CPUS (CPUs of the node, default max(nproc, 2); above the real count the
#              node is configured with SlurmdParameters=config_overrides).
set -uo pipefail

die() { echo "cluster.sh: error: $*" >&2; exit 1; }
skip() { echo "cluster.sh: SKIP: $*" >&2; exit 77; }
usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }

[ $# -eq 2 ] || usage
ACTION=$1
DIR=$2
case "$ACTION" in start|stop|status) ;; *) usage ;; esac
mkdir -p "$DIR" || die "cannot create $DIR"
DIR=$(cd "$DIR" && pwd) || die "cannot enter $DIR"
CONF=$DIR/slurm.conf
HOST=$(hostname -s)

# --- helpers -----------------------------------------------------------------------------------
alive() { # alive PID NAME: the process exists and is NAME (guards against a reused PID)
  local pid=$1 name=$2
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]
}

recorded() { # recorded NAME: the PID of NAME that `start` recorded in DIR/pids (else its pid file)
  local pid
  pid=$(awk -v n="$1" '$1 == n {print $2}' "$DIR/pids" 2>/dev/null)
  [ -n "$pid" ] || pid=$(cat "$DIR/$1.pid" 2>/dev/null)
  echo "$pid"
}

stop_pid() { # stop_pid NAME: SIGTERM the recorded PID of NAME, wait for it (SIGKILL after 20 s)
  local name=$1 pid i
  pid=$(recorded "$name")
  if alive "$pid" "$name"; then
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 200); do alive "$pid" "$name" || break; sleep 0.1; done
    if alive "$pid" "$name"; then
      echo "cluster.sh: $name ($pid) did not exit after SIGTERM; SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null
      for i in $(seq 1 50); do alive "$pid" "$name" || break; sleep 0.1; done
    fi
    alive "$pid" "$name" && { echo "cluster.sh: $name ($pid) is still running" >&2; return 1; }
    echo "cluster.sh: stopped $name ($pid)"
  fi
  return 0
}

show_logs() {
  local f
  for f in "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" /var/log/munge/munged.log; do
    [ -r "$f" ] || continue
    echo "----- $f (last 40 lines) -----" >&2
    tail -n 40 "$f" >&2
  done
  if [ -f "$CONF" ]; then
    echo "----- scontrol show node $HOST -----" >&2
    SLURM_CONF=$CONF timeout 10 scontrol show node "$HOST" >&2 2>&1
  fi
}

munge_ok() { timeout 10 munge -n 2>/dev/null | timeout 10 unmunge >/dev/null 2>&1; }

free_port() { # a TCP port nobody listens on (the kernel picks it)
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000))
}

node_state() { SLURM_CONF=$CONF timeout 10 sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n 1; }

running() { # the daemons recorded in DIR are alive and the node is up
  alive "$(recorded slurmctld)" slurmctld && alive "$(recorded slurmd)" slurmd &&
    case "$(node_state)" in idle*|mixed*|allocated*|completing*) true ;; *) false ;; esac
}

# --- stop / status -----------------------------------------------------------------------------
if [ "$ACTION" = status ]; then
  if running; then echo "cluster.sh: running ($DIR, node $HOST $(node_state))"; exit 0; fi
  echo "cluster.sh: not running ($DIR)"; exit 1
fi

if [ "$ACTION" = stop ]; then
  rc=0
  # slurmd first (it reports to slurmctld), then slurmctld, then munged if we started it
  stop_pid slurmd || rc=1
  stop_pid slurmctld || rc=1
  stop_pid munged || rc=1   # only recorded when `start` started it
  [ $rc = 0 ] && rm -f "$DIR/pids" "$DIR/munged.pid" "$DIR/slurmd.pid" "$DIR/slurmctld.pid"
  exit $rc
fi

# --- start -------------------------------------------------------------------------------------
missing=()
for b in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged; do [ -x "$b" ] || missing+=("$b"); done
for b in sinfo sbatch scontrol squeue scancel munge unmunge; do command -v "$b" >/dev/null || missing+=("$b"); done
[ ${#missing[@]} -eq 0 ] || skip "Slurm/munge not installed (missing: ${missing[*]}); install slurmctld slurmd slurm-client munge"
[ "$(id -u)" = 0 ] || skip "starting slurmd and munged needs root"

if running; then
  echo "cluster.sh: already running ($DIR)"
  echo "export SLURM_CONF=$CONF"
  exit 0
fi
# left-overs of an earlier start in DIR (a daemon died): stop what is left, start afresh
for d in slurmd slurmctld; do stop_pid "$d" || die "cannot stop the old $d of $DIR"; done
rm -f "$DIR/pids" "$DIR/slurmd.pid" "$DIR/slurmctld.pid"

# munge: reuse a munged that answers, else start one as user munge (and record it for `stop`)
if ! munge_ok; then
  KEY=/etc/munge/munge.key
  if [ ! -s "$KEY" ]; then
    install -d -o munge -g munge -m 0700 /etc/munge || die "cannot create /etc/munge"
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile="$KEY" || die "mungekey --create failed"
    else
      dd if=/dev/urandom of="$KEY" bs=1 count=1024 status=none || die "cannot write $KEY"
    fi
    echo "cluster.sh: created the munge key $KEY"
  fi
  chown munge:munge "$KEY" && chmod 0400 "$KEY" || die "cannot set the owner and mode of $KEY"
  install -d -o munge -g munge -m 0755 /run/munge || die "cannot create /run/munge"
  install -d -o munge -g munge -m 0711 /var/lib/munge && install -d -o munge -g munge -m 0700 /var/log/munge \
    || die "cannot create /var/lib/munge or /var/log/munge"
  # a dead munged may have left its socket and pid file: munged refuses to start over a live one only
  runuser -u munge -- /usr/sbin/munged || { show_logs; die "munged did not start"; }
  for i in $(seq 1 100); do munge_ok && break; sleep 0.1; done
  munge_ok || { show_logs; die "munged started but 'munge -n | unmunge' fails"; }
  MPID=$(cat /run/munge/munged.pid 2>/dev/null)
  alive "$MPID" munged || die "munged answers but /run/munge/munged.pid does not name it"
  echo "$MPID" > "$DIR/munged.pid"
  echo "cluster.sh: started munged ($MPID)"
fi

# slurm.conf: this host, its CPUs and memory, every path under DIR
REAL_CPUS=$(nproc)
CPUS=${SLURM_CLUSTER_CPUS:-$(( REAL_CPUS < 2 ? 2 : REAL_CPUS ))}
MEM=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n 1)
[ -n "$MEM" ] || MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 ))
MEM=$(( MEM * 9 / 10 ))   # headroom: slurmd refuses a node that reports less than RealMemory
CTLD_PORT=$(free_port)
SLURMD_PORT=$(free_port)
while [ "$SLURMD_PORT" = "$CTLD_PORT" ]; do SLURMD_PORT=$(free_port); done
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" || die "cannot create the directories in $DIR"
cat > "$CONF" <<EOF
# Generated by tests/slurm/cluster.sh for a single-node test cluster; every path is under $DIR.
ClusterName=tessera-test
SlurmctldHost=$HOST
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again after cred_expire seconds (default 120: too long for tests)
AuthInfo=cred_expire=${SLURM_CLUSTER_CRED_EXPIRE:-15}
MailProg=/bin/true
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=60
KillWait=10
MinJobAge=600
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=test Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

# -c: a clean start (no job state of an earlier run in DIR)
/usr/sbin/slurmctld -c -f "$CONF" || { show_logs; die "slurmctld -f $CONF failed"; }
/usr/sbin/slurmd -c -f "$CONF" || { show_logs; die "slurmd -f $CONF failed"; }
for i in $(seq 1 50); do
  [ -s "$DIR/slurmctld.pid" ] && [ -s "$DIR/slurmd.pid" ] && break; sleep 0.1
done
CTLD_PID=$(cat "$DIR/slurmctld.pid" 2>/dev/null)
SLURMD_PID=$(cat "$DIR/slurmd.pid" 2>/dev/null)
alive "$CTLD_PID" slurmctld || { show_logs; die "slurmctld is not running (pid file $DIR/slurmctld.pid)"; }
alive "$SLURMD_PID" slurmd || { show_logs; die "slurmd is not running (pid file $DIR/slurmd.pid)"; }
# the daemons delete their pid files when they exit: keep our own copy of the PIDs
printf 'slurmctld %s\nslurmd %s\nmunged %s\n' "$CTLD_PID" "$SLURMD_PID" "$(cat "$DIR/munged.pid" 2>/dev/null)" > "$DIR/pids"

TIMEOUT=${SLURM_START_TIMEOUT:-60}
t0=$SECONDS
state=""
while [ $((SECONDS - t0)) -lt "$TIMEOUT" ]; do
  state=$(node_state)
  case "$state" in idle*) break ;; esac
  alive "$CTLD_PID" slurmctld && alive "$SLURMD_PID" slurmd || break
  sleep 0.2
done
case "$state" in
  idle*) ;;
  *) show_logs
     echo "cluster.sh: error: node $HOST is not idle after $((SECONDS - t0)) s (state '${state:-no answer}'); stopping" >&2
     "$0" stop "$DIR" >&2
     exit 1 ;;
esac
echo "cluster.sh: node $HOST idle ($CPUS CPUs, ${MEM} MB) after $((SECONDS - t0)) s; slurmctld $CTLD_PID, slurmd $SLURMD_PID; logs in $DIR/log"
echo "export SLURM_CONF=$CONF"
