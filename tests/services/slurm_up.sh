#!/usr/bin/env bash
# tests/services/slurm_up.sh (from /work/shared/recipes) -- bring up a REAL single-node Slurm cluster on localhost (Debian 12, root, no systemd).
# Idempotent: installs packages if missing, (re)writes the config, starts munged/slurmctld/slurmd
# (and, with SLURM_ACCOUNTING=1, mariadbd + slurmdbd so that `sacct` works) only if they are not
# already running, then waits until `sinfo` reports the node idle.  Every daemon listens on
# 127.0.0.1 only (MariaDB: unix socket only).
#
# Env knobs:
#   SLURM_LOCAL_DIR   state/log/pid dir             (default /tmp/slurm-local)
#   SLURM_CPUS        CPUs advertised for the node  (default: nproc; may exceed the real cores:
#                     SlurmdParameters=config_overrides makes slurmd accept that)
#   SLURM_MEM_MB      RealMemory for the node       (default: 80% of MemTotal)
#   SLURM_ACCOUNTING  1 = also run slurmdbd + MariaDB so sacct works (default 0)
#   SLURM_CONF        config path (default /etc/slurm/slurm.conf; client commands only find it
#                     by themselves at that path, otherwise export SLURM_CONF)
#   SLURM_UP_TIMEOUT  seconds to wait for each daemon / the idle node (default 60)
set -euo pipefail

SLURM_LOCAL_DIR=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
SLURM_CPUS=${SLURM_CPUS:-$(nproc)}
SLURM_MEM_MB=${SLURM_MEM_MB:-$(awk '/MemTotal/ {printf "%d", $2/1024*0.8}' /proc/meminfo)}
SLURM_ACCOUNTING=${SLURM_ACCOUNTING:-0}
export SLURM_CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
SLURM_UP_TIMEOUT=${SLURM_UP_TIMEOUT:-60}
CLUSTER=localcluster
NODE=localhost
DBD_CONF=$(dirname "$SLURM_CONF")/slurmdbd.conf
DB_PASS=slurm-local-test        # MariaDB is socket-only; this never leaves the machine

t0=$(date +%s.%N)
log() { printf '[slurm_up %6.2fs] %s\n' "$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{print a-b}')" "$*"; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # description, command...
  local what=$1; shift
  local deadline=$(( $(date +%s) + SLURM_UP_TIMEOUT ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "timeout waiting for $what" >&2; return 1; }
    sleep 0.1
  done
}

# 1. packages (Debian 12: slurm-wlm 22.05.8, munge 0.5.15, mariadb 10.11) ---------------------
PKGS="slurmctld slurmd slurm-client munge"
[ "$SLURM_ACCOUNTING" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
MISSING=$(for p in $PKGS; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'ok installed' || echo "$p"; done)
if [ -n "$MISSING" ]; then
  log "installing $(echo $MISSING)"
  ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -qq
  # policy-rc.d/invoke-rc.d refuse to start services here: fine, we start them ourselves
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $MISSING >/dev/null
fi

# 2. munge ----------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then   # the Debian postinst normally creates it
  log "creating munge key"
  mungekey --create --force --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  rm -f /run/munge/munge.socket.2 /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged          # daemonizes, pid file /run/munge/munged.pid
  wait_for munged sh -c 'munge -n | unmunge'
fi
log "munge OK"

mkdir -p "$SLURM_LOCAL_DIR"/{state,spool,log} "$(dirname "$SLURM_CONF")"

# 3. optional accounting: MariaDB (socket only) + slurmdbd --------------------------------------
if [ "$SLURM_ACCOUNTING" = 1 ]; then
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if ! mariadb -e 'select 1' >/dev/null 2>&1; then
    log "starting mariadbd (--skip-networking: unix socket only)"
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock \
        --pid-file=/run/mysqld/mariadb.pid </dev/null >>"$SLURM_LOCAL_DIR/log/mariadb.log" 2>&1 &
    wait_for mariadb mariadb -e 'select 1'
  fi
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
              CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  log "mariadb OK"
  cat > "$DBD_CONF" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
# undocumented for slurmdbd.conf in 22.05, but honoured by the shared listener code:
# bind to what the hostname resolves to (127.0.0.1 here) instead of 0.0.0.0
CommunicationParameters=NoInAddrAny
SlurmUser=root
DebugLevel=info
LogFile=$SLURM_LOCAL_DIR/log/slurmdbd.log
PidFile=$SLURM_LOCAL_DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASS
EOF
  chmod 0600 "$DBD_CONF"                         # slurmdbd refuses a world-readable file
fi

# 4. slurm.conf ---------------------------------------------------------------------------------
if [ "$SLURM_ACCOUNTING" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
else
  ACCT="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
NEWCONF=$(mktemp)
cat > "$NEWCONF" <<EOF
# single-node localhost test cluster, written by slurm_up.sh
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
# bind daemons (and srun's I/O ports) to what the names resolve to (127.0.0.1), not 0.0.0.0
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
# no cgroups anywhere
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$ACCT
JobCompType=jobcomp/filetxt
JobCompLoc=$SLURM_LOCAL_DIR/log/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
StateSaveLocation=$SLURM_LOCAL_DIR/state
SlurmdSpoolDir=$SLURM_LOCAL_DIR/spool
SlurmctldPidFile=$SLURM_LOCAL_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_LOCAL_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_LOCAL_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_LOCAL_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$SLURM_CPUS RealMemory=$SLURM_MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
CONF_CHANGED=0
if ! cmp -s "$NEWCONF" "$SLURM_CONF"; then
  log "writing $SLURM_CONF"
  cp "$NEWCONF" "$SLURM_CONF"; chmod 0644 "$SLURM_CONF"
  CONF_CHANGED=1
fi
rm -f "$NEWCONF"

# 5. daemons (no systemd: started directly; all daemonize and write pid files) -------------------
if [ "$SLURM_ACCOUNTING" = 1 ]; then
  if ! alive "$SLURM_LOCAL_DIR/slurmdbd.pid"; then
    log "starting slurmdbd"
    slurmdbd
  fi
  wait_for slurmdbd sacctmgr -n list cluster
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
  log "slurmdbd OK (cluster $CLUSTER registered)"
fi

if [ "$CONF_CHANGED" = 1 ]; then   # plugin changes need a restart, not `scontrol reconfigure`
  for d in slurmd slurmctld; do
    if alive "$SLURM_LOCAL_DIR/$d.pid"; then
      log "restarting $d for the new config"
      pid=$(cat "$SLURM_LOCAL_DIR/$d.pid"); kill "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
fi
if ! alive "$SLURM_LOCAL_DIR/slurmctld.pid"; then
  log "starting slurmctld"
  slurmctld          # add -c to discard saved job state
fi
wait_for slurmctld sh -c 'scontrol ping | grep -q "is UP"'
log "slurmctld UP"
if ! alive "$SLURM_LOCAL_DIR/slurmd.pid"; then
  log "starting slurmd"
  slurmd -N "$NODE"
fi

# 6. wait for the node to be idle ----------------------------------------------------------------
deadline=$(( $(date +%s) + SLURM_UP_TIMEOUT ))
while :; do
  state=$(sinfo -h -n "$NODE" -o '%T' 2>/dev/null || true)
  case "$state" in
    idle|mixed|allocated) break ;;
    *drain*|*down*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
  esac
  [ "$(date +%s)" -lt "$deadline" ] || { echo "node not idle (state=$state)" >&2; sinfo -R >&2; exit 1; }
  sleep 0.2
done
log "node $NODE is $state"
sinfo
