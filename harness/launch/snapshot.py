"""Code freezing: the jobs of a submission run a copy of the code as it was when submitted,
not whatever the checkout holds when a job finally starts (hours later, after edits).

The copy holds what git sees (tracked and untracked, not ignored) or, outside git, the
packages and config folders. Large files (the world's weights) are hard-linked, not copied:
a rebuilt file is a new inode, so the snapshot keeps the bytes it was made with. Snapshots
are named by a digest of their content, so submissions of unchanged code share one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from harness.env import REPO, git_state

MARKER = "CODE.json"  # in a snapshot's root: what it was made from (harness.env reads it)
CODE_DIRS = ("harness", "methods", "sweeps", "slurm", "analysis")
LINK_ABOVE_BYTES = 1 << 20


def source_files(repo: Path = REPO) -> list[Path]:
    """The files of the working tree, relative to `repo`."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "-co", "--exclude-standard"],
                            capture_output=True, timeout=60)
    if listed.returncode == 0 and listed.stdout:
        names = [n for n in listed.stdout.decode().split("\0") if n]
    else:  # not a git checkout (an unpacked release): the code folders
        names = [str(p.relative_to(repo)) for d in CODE_DIRS if (repo / d).is_dir() for p in (repo / d).rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts]
        names += [n for n in ("pyproject.toml", "README.md") if (repo / n).is_file()]
    return sorted(Path(n) for n in names if (repo / n).is_file())


def digest(repo: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for rel in files:
        h.update(str(rel).encode() + b"\0")
        h.update(hashlib.sha256((repo / rel).read_bytes()).digest())
    return h.hexdigest()[:12]


def freeze(dest_root: Path, repo: Path = REPO) -> dict:
    """Snapshot the code under dest_root/<digest>/ (once per content); returns its record."""
    files = source_files(repo)
    key = digest(repo, files)
    dest = Path(dest_root) / key
    if (dest / MARKER).exists():
        return json.loads((dest / MARKER).read_text())
    tmp = dest.with_name(f"{key}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in files:
        src, dst = repo / rel, tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.stat().st_size > LINK_ABOVE_BYTES:
            try:
                os.link(src, dst)
                continue
            except OSError:  # another file system: copy
                pass
        shutil.copy2(src, dst)
    git = git_state(repo)
    record = {"path": str(dest.resolve()), "digest": key, "files": len(files), "source": str(repo), **git}
    if git.get("dirty"):
        diff = subprocess.run(["git", "-C", str(repo), "diff", "HEAD"], capture_output=True, text=True, timeout=60).stdout
        (tmp / "DIFF.patch").write_text(diff)  # what the snapshot adds to its commit
    (tmp / MARKER).write_text(json.dumps(record, indent=1))
    try:
        tmp.rename(dest)
    except OSError:  # made by a concurrent submission meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return json.loads((dest / MARKER).read_text())
