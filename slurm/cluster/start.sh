#!/usr/bin/env bash
# Start a real one-node SLURM cluster on localhost, for tests and for trying the SLURM launcher:
# munge, a private MariaDB, slurmdbd, slurmctld and slurmd, all bound to 127.0.0.1, all state
# under one folder, two fake GPUs (GRES). Needs root (Debian: installs its packages if missing).
#
#   slurm/cluster/start.sh [DIR]     DIR: $HARNESS_SLURM_DIR, else ${XDG_RUNTIME_DIR:-~/.cache}/harness-slurm
#   source DIR/env.sh                then sbatch / squeue / sacct / python -m harness launcher=slurm
#   slurm/cluster/stop.sh [DIR]      stops only the daemons this script started
#
# Safe on a shared machine: DIR is private (made 0700; one that is a symlink, belongs to
# another user or is open to others is refused), so nothing in it can be planted; a fresh
# munge key at every start; the database's root logs in by unix socket only (in DIR) and the
# accounting user has a generated password kept 0600 in DIR; every daemon listens on
# 127.0.0.1; stop.sh signals only processes it verifies as this cluster's daemons.
#
# Cold start ~20 s, restart with state kept ~3 s (measured: README). Requeue latency is cut to
# seconds (cred_expire=10, sched_interval=2): SLURM's default holds a requeued job ~120 s.
set -euo pipefail
umask 077
. "$(dirname "$0")/lib.sh"
DIR=$(cluster_dir "${1:-}")
HOST=$(hostname -s)
PORT_CTLD=${HARNESS_SLURM_PORT:-16817}
PORT_D=$((PORT_CTLD + 1)) PORT_DBD=$((PORT_CTLD + 2)) PORT_DB=$((PORT_CTLD + 3))
CPUS=${HARNESS_SLURM_CPUS:-8} MEMORY_MB=${HARNESS_SLURM_MEMORY_MB:-16000} GPUS=${HARNESS_SLURM_GPUS:-2}
start=$(date +%s%N)

say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (the daemons run as SlurmUser=root)"
check_private_dir "$DIR" || exit 1

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
  say "installing slurmctld slurmd slurmdbd munge mariadb-server"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client slurmdbd munge mariadb-server >/dev/null
fi

all_alive() {
  [ -s "$DIR/pids" ] || return 1
  while read -r name pid; do is_ours "$name" "$pid" || return 1; done < "$DIR/pids"
}
if all_alive; then say "already running in $DIR; source $DIR/env.sh"; exit 0; fi
[ -f "$DIR/pids" ] && "$(dirname "$0")/stop.sh" "$DIR" >/dev/null
mkdir -p -m 0700 "$DIR"
chmod 0700 "$DIR"
mkdir -p "$DIR"/{etc,state,spool,log,run,munge,db,dev}
write() {  # FILE: stdin into FILE, never through a link left in its place
  rm -f "$1" && (set -C; cat > "$1")
}
write "$DIR/pids" < /dev/null
SOCKET="$DIR/munge/munge.socket"

launch() {  # name, command...: run in the foreground of its own session, remember its PID
  local name=$1; shift
  setsid "$@" > "$DIR/log/$name.out" 2>&1 < /dev/null &
  echo "$name $!" >> "$DIR/pids"
}
wait_for() {  # what, seconds, test command...
  local what=$1 limit=$2; shift 2
  for _ in $(seq $((limit * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$what did not come up in ${limit} s (logs: $DIR/log)"
}

# munge: its own key (fresh at every start: nobody else ever held it) and socket
rm -f "$DIR/munge/munge.key"
head -c 1024 /dev/urandom | write "$DIR/munge/munge.key"
chmod 0600 "$DIR/munge/munge.key"
launch munged munged --foreground --force --socket="$SOCKET" --key-file="$DIR/munge/munge.key" \
  --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
wait_for munged 10 munge --socket="$SOCKET" -n

# MariaDB for accounting: submitit polls sacct, which needs slurmdbd. Its root logs in through
# the unix socket in DIR only; slurmdbd's user has a generated password.
fresh_db=0
[ -d "$DIR/db/mysql" ] || { mariadb-install-db --user=root --datadir="$DIR/db" --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1; fresh_db=1; }
if [ $fresh_db = 1 ] || [ ! -s "$DIR/etc/db.secret" ]; then
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' | write "$DIR/etc/db.secret"
fi
DB_PASS=$(cat "$DIR/etc/db.secret")
launch mariadbd mariadbd --user=root --datadir="$DIR/db" --socket="$DIR/run/mysql.sock" --port="$PORT_DB" \
  --bind-address=127.0.0.1 --pid-file="$DIR/run/mariadbd.pid" --log-error="$DIR/log/mariadbd.log" --skip-log-bin
wait_for mariadbd 30 mariadb --socket="$DIR/run/mysql.sock" -uroot -e "select 1"
mariadb --socket="$DIR/run/mysql.sock" -uroot -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1';
  ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS'; DROP USER IF EXISTS 'slurm'@'localhost';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"

# fake GPUs: GRES needs device files, or slurmd drops the node
for i in $(seq 0 $((GPUS - 1))); do [ -e "$DIR/dev/gpu$i" ] || mknod "$DIR/dev/gpu$i" c 1 3; done

write "$DIR/etc/slurm.conf" <<CONF
ClusterName=harness
SlurmctldHost=$HOST(127.0.0.1)
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmctldPort=$PORT_CTLD
SlurmdPort=$PORT_D
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET,cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
MinJobAge=300
KillWait=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$PORT_DBD
AccountingStoragePass=$SOCKET
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
SlurmdParameters=config_overrides
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEMORY_MB Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP
CONF
echo "NodeName=$HOST Name=gpu File=$DIR/dev/gpu[0-$((GPUS - 1))]" | write "$DIR/etc/gres.conf"
write "$DIR/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$SOCKET
CommunicationParameters=NoInAddrAny
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=$PORT_DBD
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$PORT_DB
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
CONF
chmod 0600 "$DIR/etc/slurmdbd.conf" "$DIR/etc/db.secret"
write "$DIR/env.sh" <<ENV
export SLURM_CONF=$DIR/etc/slurm.conf
ENV
export SLURM_CONF="$DIR/etc/slurm.conf"
chmod 0644 "$DIR/etc/slurm.conf" "$DIR/etc/gres.conf" "$DIR/env.sh"  # readable, inside a 0700 folder

launch slurmdbd slurmdbd -D   # reads slurmdbd.conf beside \$SLURM_CONF
wait_for slurmdbd 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT_DBD"
launch slurmctld slurmctld -D -i -f "$SLURM_CONF"
wait_for slurmctld 30 scontrol ping
launch slurmd slurmd -D -f "$SLURM_CONF"
wait_for "node $HOST" 30 bash -c "sinfo -h -N -o %t | grep -qx idle"
ms=$((($(date +%s%N) - start) / 1000000))
say "up in $((ms / 1000)).$((ms % 1000 / 100)) s: $CPUS CPUs, $GPUS fake GPUs; source $DIR/env.sh"
