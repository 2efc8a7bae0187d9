#!/usr/bin/env bash
# tests/services/slurm_down.sh (from /work/shared/recipes) -- stop what slurm_up.sh started, by PID file (never by process name).
#   PURGE=1 also removes $SLURM_LOCAL_DIR (job state, logs); the packages stay installed.
set -uo pipefail
SLURM_LOCAL_DIR=${SLURM_LOCAL_DIR:-/tmp/slurm-local}

stop_pidfile() {  # name pidfile
  local name=$1 pf=$2 pid
  [ -s "$pf" ] || { echo "$name: no pid file"; return 0; }
  pid=$(cat "$pf")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { echo "$name: SIGKILL $pid"; kill -KILL "$pid"; }
    echo "$name ($pid) stopped"
  else
    echo "$name: not running"
  fi
  rm -f "$pf"
}

# cancel anything still queued/running so no job steps are orphaned
if command -v scancel >/dev/null && scontrol ping 2>/dev/null | grep -q UP; then
  if [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then scancel --full --user="$(id -un)"; sleep 1; fi
fi
stop_pidfile slurmd    "$SLURM_LOCAL_DIR/slurmd.pid"
stop_pidfile slurmctld "$SLURM_LOCAL_DIR/slurmctld.pid"
[ -e "$SLURM_LOCAL_DIR/slurmdbd.pid" ] && stop_pidfile slurmdbd "$SLURM_LOCAL_DIR/slurmdbd.pid"
if [ "${PURGE:-0}" = 1 ] && mariadb -e 'select 1' >/dev/null 2>&1; then
  # job ids restart at 1 after a purge; drop the accounting DB too so sacct stays consistent
  mariadb -e 'DROP DATABASE IF EXISTS slurm_acct_db' && echo "dropped slurm_acct_db"
fi
[ -e /run/mysqld/mariadb.pid ] && stop_pidfile mariadbd /run/mysqld/mariadb.pid
stop_pidfile munged    /run/munge/munged.pid
if [ "${PURGE:-0}" = 1 ]; then rm -rf "$SLURM_LOCAL_DIR"; echo "removed $SLURM_LOCAL_DIR"; fi
exit 0
