# Shared by start.sh and stop.sh: the cluster's folder and how its daemons are recognised.
# shellcheck shell=bash

cluster_dir() {  # the folder: argument, $HARNESS_SLURM_DIR, or a private default under $HOME
  realpath -ms "${1:-${HARNESS_SLURM_DIR:-${XDG_RUNTIME_DIR:-$HOME/.cache}/harness-slurm}}"
}

check_private_dir() {  # DIR: refuse a symlink, a non-folder, one owned by another user or writable by others
  local dir=$1
  [ -L "$dir" ] && { echo "slurm-local: error: $dir is a symbolic link: refusing it" >&2; return 1; }
  [ -e "$dir" ] && [ ! -d "$dir" ] && { echo "slurm-local: error: $dir is not a folder" >&2; return 1; }
  [ -d "$dir" ] || return 0
  local owner mode
  owner=$(stat -c %u "$dir") mode=$(stat -c %a "$dir")
  [ "$owner" = "$(id -u)" ] || { echo "slurm-local: error: $dir belongs to uid $owner, not to you: refusing it" >&2; return 1; }
  (( (8#$mode & 8#077) == 0 )) || { echo "slurm-local: error: $dir has mode $mode: others can reach it (chmod 700 it, or pick another folder)" >&2; return 1; }
}

is_ours() {  # NAME PID: PID is the daemon NAME that start.sh launched for this DIR
  local name=$1 pid=$2 exe
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  case "$(basename "$exe")" in "$name" | "$name-wlm") ;; *) return 1 ;; esac  # (Debian: slurmctld-wlm)
  # every daemon of this cluster names DIR on its command line or in its SLURM_CONF
  tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$DIR/" && return 0
  tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$DIR/etc/slurm.conf"
}
