"""A new out_dir's MLflow SQLite store, made in a tenth of a second instead of five.

MLflow creates a SQLite store by running every Alembic migration of its schema, one by one:
4.7 s on 2 cores, paid by the first cell of every new out_dir (each SLURM job of a new sweep
waits on it under the store lock, and so does every test with its own out_dir). The result
is the same empty schema each time. So MLflow makes it once per installed version, into a
private cache folder, and a new store is a copy of that file (0.06 s with MLflow's schema
check on opening it), with the one row MLflow writes per store, the Default experiment, set
as MLflow would set it now: its artifact location under the current folder and its times.

The template is only ever MLflow's own output: made in a private temporary folder, renamed
into a folder only this user can write, keyed by the versions of MLflow, SQLAlchemy and
Alembic, and refused (made afresh) if it or its folder could have been changed by others.
MLflow still checks the copy's schema version when it opens it."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from harness.files import publish

log = logging.getLogger("harness")

DEFAULT_EXPERIMENT_ID = 0  # the experiment MLflow creates in every new store


def cache_folder() -> Path:
    """`$HARNESS_CACHE`, else `$XDG_CACHE_HOME/harness`, else `~/.cache/harness`; made 0700."""
    root = os.environ.get("HARNESS_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "harness"
    folder = Path(root) / "mlflow-store"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def _private(path: Path) -> bool:
    """Owned by us and writable by nobody else (the file and the folder holding it)."""
    for p in (path, path.parent):
        st = p.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            return False
    return True


def template() -> Path:
    """The empty store MLflow makes, for the installed versions: made on first use."""
    folder = cache_folder()
    key = "-".join(f"{name}{version(name)}" for name in ("mlflow-skinny", "sqlalchemy", "alembic"))
    path = folder / f"empty-{key}.db"
    with open(folder / ".lock", "a") as lock:  # two processes on a new machine make it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file() and _private(path):
            return path
        if path.exists():
            log.warning("MLflow store template %s is writable by others or not ours: making it again", path)
            path.unlink()
        from mlflow.tracking import MlflowClient

        with tempfile.TemporaryDirectory(dir=folder, prefix=".making-") as tmp:
            made = Path(tmp) / "store.db"
            MlflowClient(tracking_uri=f"sqlite:///{made}").search_experiments()  # MLflow runs its migrations here
            os.chmod(made, 0o600)
            os.replace(made, path)
    return path


def create(db: Path) -> bool:
    """Make the SQLite store `db` from the template if it does not exist yet (call it under
    the store's lock). Returns whether it made one."""
    db = Path(db)
    if db.exists():
        return False
    db.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=db.parent, prefix=f".{db.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        shutil.copyfile(template(), tmp)
        now = int(time.time() * 1000)
        # what MLflow writes for a client opened here: artifacts under ./mlruns, resolved now
        location = str(Path.cwd().resolve() / "mlruns" / str(DEFAULT_EXPERIMENT_ID))
        with sqlite3.connect(tmp) as conn:
            conn.execute("update experiments set artifact_location = ?, creation_time = ?, last_update_time = ? "
                         "where experiment_id = ?", (location, now, now, DEFAULT_EXPERIMENT_ID))
        conn.close()
        publish(tmp, db)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True
