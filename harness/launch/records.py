"""Which SLURM job runs which cell, kept on disk so that nothing is lost or orphaned.

A submission is recorded in two steps around `sbatch`:
    1. before:  slurm/submissions/<token>.json  {state: submitting, job_name, cells}
    2. after:   the same file                   {state: submitted, job_ids: {cell: "<array>_<i>"}}
(submitit submits a single cell as a plain job, "<id>", several as an array, "<array>_<i>".)
The job name carries the token, so a crash between the two steps is repaired by asking the
scheduler for jobs of that name (`reconcile`): the jobs are adopted, never submitted twice.

The scheduler's view comes from one `sacct` call for every job of interest (`job_states`)."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from harness.files import write_atomic

# sacct states after which a job will not run again by itself
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
# a record still "submitting" after this long, with no job of its name, submitted nothing
ABANDON_AFTER_S = 120
# a job sacct does not know (yet) is taken as queued for this long after its submission
UNKNOWN_GRACE_S = 300


# the line of a job's stderr that says why it failed: a traceback's last line, or the scheduler's
_ERROR_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception|Interrupt|Exit)\b|^(srun|slurmstepd): error|Killed|Segmentation fault")


def job_error(folder: str | Path, job: str) -> str | None:
    """Why job `job` ended without its cell saying so (no FAILED marker: the process died before
    the cell's own error handling, e.g. in the process group's rendezvous, or was killed): the
    last error line of its tasks' stderr logs in submitit's `folder` (`%j`: the job id), with
    that log's path."""
    found = None
    for log in sorted(Path(str(folder).replace("%j", job)).glob(f"{job}_*_log.err")):
        lines = [l.strip() for l in log.read_text(errors="replace").splitlines() if l.strip()]
        errors = [l for l in lines if _ERROR_LINE.search(l)]
        if errors:
            found = f"{errors[-1][:300]} ({log})"
            if not log.name.startswith(f"{job}_0_"):  # another rank's own failure says more than rank 0's echo
                break
    return found


def submissions_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "slurm" / "submissions"


@dataclass
class Submission:
    token: str
    sweep_id: str
    job_name: str
    cells: list[str]  # in array order: cell i is array task i
    created: float
    state: str = "submitting"  # submitting | submitted | abandoned
    job_ids: dict[str, str] = field(default_factory=dict)  # cell -> "<array>_<i>" (or "<id>" alone)
    code: dict = field(default_factory=dict)
    path: Path | None = None

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        write_atomic(self.path, json.dumps(data, indent=1))

    @classmethod
    def create(cls, out_dir: Path, sweep_id: str, cells: list[str], code: dict | None = None) -> "Submission":
        token = secrets.token_hex(4)
        sub = cls(token, sweep_id, f"harness-{sweep_id}-{token}", list(cells), time.time(), code=dict(code or {}))
        sub.path = submissions_dir(out_dir) / f"{_stamp()}-{token}.json"
        sub.save()
        return sub

    def submitted(self, job_ids: list[str]) -> None:
        self.state, self.job_ids = "submitted", dict(zip(self.cells, map(str, job_ids)))
        self.save()


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")


def load_submissions(out_dir: Path) -> list[Submission]:
    """Every submission under `out_dir`, oldest first."""
    subs = []
    for path in sorted(submissions_dir(out_dir).glob("*.json")):
        data = json.loads(path.read_text())
        subs.append(Submission(**data, path=path))
    return subs


def latest_jobs(subs: list[Submission]) -> dict[str, tuple[str, Submission]]:
    """cell id -> (job id of its latest submission, that submission)."""
    latest = {}
    for sub in subs:
        for cell, job in sub.job_ids.items():
            latest[cell] = (job, sub)
    return latest


def sacct_available() -> bool:
    return shutil.which("sacct") is not None


def _expand(task_spec: str) -> list[str]:
    """'[2-4,7%4]' -> ['2', '3', '4', '7'] (the tasks sacct folds into one pending line)."""
    spec = task_spec.strip("[]").split("%")[0]
    tasks = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        tasks.extend(str(i) for i in range(int(lo), int(hi or lo) + 1))
    return tasks


def job_states(job_ids: list[str] | set[str], extra: tuple[str, ...] = ()) -> dict[str, str]:
    """One sacct call: {"<array>_<task>": STATE} for the given array tasks (whole arrays are
    asked for, so tasks still pending in one folded line are expanded)."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    if not arrays:
        return {}
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", ",".join(arrays), "-o", "JobID,State", *extra],
        capture_output=True, text=True, timeout=60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"sacct failed: {out.stderr.strip() or out.stdout.strip()}")
    return parse_sacct(out.stdout)


def parse_sacct(text: str) -> dict[str, str]:
    states = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        job, state = line.split("|")[:2]
        state = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
        array, _, task = job.partition("_")
        if task.startswith("["):
            for t in _expand(task):
                states[f"{array}_{t}"] = state
        else:
            states[job] = state
    return states


def find_jobs_named(name: str, since: float, count: int) -> list[str] | None:
    """The job ids the scheduler knows under `name` (submitted since `since`), in task order:
    ["<array>_0", ...] for an array of `count` tasks, ["<id>"] for a single job; None if none.
    Asks both the accounting (sacct: finished jobs too) and the controller (squeue: a job sbatch
    made a moment ago, which the accounting may not list yet)."""
    start = datetime.fromtimestamp(since - 60).strftime("%Y-%m-%dT%H:%M:%S")
    ids = set()
    for command in (["sacct", "-n", "-X", "-P", "--name", name, "-S", start, "-o", "JobID"],
                    ["squeue", "-h", "--name", name, "-o", "%F"]):  # %F: the array's (or the job's) own id
        out = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {out.stderr.strip()}")
        ids |= {line.split("_")[0].strip() for line in out.stdout.split() if line.strip()}
    if not ids:
        return None
    first = min(ids, key=int)
    return [first] if count == 1 else [f"{first}_{i}" for i in range(count)]


def reconcile(out_dir: Path) -> list[Submission]:
    """Finish the records of submissions interrupted between `sbatch` and recording the ids:
    adopt the jobs the scheduler has under the record's name, or mark the record abandoned
    when nothing was submitted. Returns every submission."""
    subs = load_submissions(out_dir)
    for sub in subs:
        if sub.state != "submitting":
            continue
        found = find_jobs_named(sub.job_name, sub.created, len(sub.cells))
        if found is not None:
            sub.submitted(found)
        elif time.time() - sub.created > ABANDON_AFTER_S:
            sub.state = "abandoned"
            sub.save()
    return subs


def in_flight(subs: list[Submission]) -> set[str]:
    """Cells whose latest job is pending, running or requeued (or whose submission is still
    being made): they must not be submitted again."""
    busy = {cell for sub in subs if sub.state == "submitting" for cell in sub.cells}
    latest = latest_jobs(subs)
    if latest:
        states = job_states({job for job, _ in latest.values()})
        for cell, (job, sub) in latest.items():
            state = states.get(job)
            # sacct can lag a fresh submission by a moment: unknown and recent counts as queued
            if (state is None and time.time() - sub.created < UNKNOWN_GRACE_S) or (state and state not in TERMINAL):
                busy.add(cell)
    return busy
