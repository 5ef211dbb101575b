#!/usr/bin/env bash
# Stop the cluster slurm/cluster/start.sh started in DIR: only the PIDs it recorded, newest
# first (slurmd before slurmctld before slurmdbd before the database and munge). State is kept,
# so the next start is a restart; rm -rf DIR to start from nothing.
set -uo pipefail
DIR=$(realpath -m "${1:-${HARNESS_SLURM_DIR:-/tmp/harness-slurm}}")
[ -f "$DIR/pids" ] || { echo "slurm-local: nothing recorded in $DIR"; exit 0; }
pids=$(tac "$DIR/pids" | awk '{print $2}')
for pid in $pids; do kill -TERM "$pid" 2>/dev/null; done
for _ in $(seq 150); do
  alive=0; for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break; sleep 0.1
done
for pid in $pids; do kill -KILL "$pid" 2>/dev/null; done
rm -f "$DIR/pids"
echo "slurm-local: stopped"
