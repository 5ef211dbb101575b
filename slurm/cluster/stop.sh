#!/usr/bin/env bash
# Stop the cluster slurm/cluster/start.sh started in DIR: only the daemons it recorded, newest
# first (slurmd before slurmctld before slurmdbd before the database and munge), and only a
# recorded PID that is still that daemon of this DIR (its executable's name and DIR in its
# command line or SLURM_CONF): a PID reused by another process is never signalled. State is
# kept, so the next start is a restart; rm -rf DIR to start from nothing.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
DIR=$(cluster_dir "${1:-}")
check_private_dir "$DIR" || exit 1
[ -f "$DIR/pids" ] || { echo "slurm-local: nothing recorded in $DIR"; exit 0; }
pids=()
while read -r name pid; do
  if is_ours "$name" "$pid"; then pids+=("$pid"); else echo "slurm-local: $name $pid is not this cluster's daemon (any more): left alone"; fi
done < <(tac "$DIR/pids")
for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
for _ in $(seq 150); do
  alive=0; for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break; sleep 0.1
done
for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null; done
rm -f "$DIR/pids"
echo "slurm-local: stopped"
