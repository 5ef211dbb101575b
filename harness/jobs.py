"""Follow a sweep's cells: where they are, what they print, and stopping or retrying them.

    python -m harness.jobs status [SWEEP] [--out-dir D] [--watch S]
    python -m harness.jobs tail CELL [-n LINES] [--follow]
    python -m harness.jobs cancel SWEEP|CELL
    python -m harness.jobs retry [SWEEP]
    python -m harness.jobs study [STUDY]        (a tuning study: harness/tune)

SWEEP is a sweep id (or its prefix) or a sweep name (its latest sweep); default: the latest
sweep under out_dir. CELL is a cell id or a unique prefix of one. A cell's state comes from its
folder (COMPLETED / FAILED markers, attempts, metrics.jsonl) and, for SLURM sweeps, from one
sacct call per refresh for the whole sweep. When every cell of a sweep has ended, status
writes its table and closes its MLflow parent run (what a waiting sweep does at its end)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from harness.errors import fail
from harness.launch import records

ENDED = {"completed", "failed", "cancelled", "timeout", "out_of_memory", "node_fail", "preempted", "boot_fail", "deadline"}


# -- finding things ---------------------------------------------------------------------------
def sweep_folders(out_dir: Path) -> list[Path]:
    """Sweep folders under out_dir, oldest first."""
    return sorted((Path(out_dir) / "sweeps").glob("*/sweep.json"), key=lambda p: p.stat().st_mtime)


def find_sweep(out_dir: Path, key: str | None) -> Path:
    found = [p.parent for p in sweep_folders(out_dir)]
    if not found:
        fail(f"no sweep under {out_dir}/sweeps: pass --out-dir where the sweep wrote")
    if key is None:
        return found[-1]
    exact = [f for f in found if f.name == key]
    named = [f for f in found if json.loads((f / "sweep.json").read_text()).get("name") == key]
    prefixed = [f for f in found if f.name.startswith(key)]
    for matches in (exact, named, prefixed):
        if matches:
            return matches[-1]
    fail(f"sweep {key} not found under {out_dir}/sweeps: one of {', '.join(f.name for f in found)}")


def find_cell(out_dir: Path, key: str) -> Path:
    matches = sorted(p for p in (Path(out_dir) / "cells").glob(f"{key}*") if p.is_dir())
    if len(matches) != 1:
        fail(f"cell {key}: " + ("no such cell" if not matches else f"ambiguous ({', '.join(m.name for m in matches)})")
             + f" under {out_dir}/cells")
    return matches[0]


# -- one row per cell -------------------------------------------------------------------------
def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def last_line(path: Path) -> dict | None:
    """The last complete JSON line of a (possibly growing) jsonl file."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 8192))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def latest_value(folder: Path) -> str:
    """The cell's latest figure: its FID when done, else its latest logged loss."""
    results = read_json(folder / "results.json")
    if results and (folder / "COMPLETED").exists():
        m = results.get("metrics", {})
        return f"fid {m['fid']:.2f}" if isinstance(m.get("fid"), float) else f"mse {m.get('heldout_mse', float('nan')):.4f}"
    record = last_line(folder / "metrics.jsonl")
    if not record:
        return ""
    losses = {k: v for k, v in record.get("values", {}).items() if k.endswith("/loss")}
    key = min(losses, key=len) if losses else None
    return f"{record['stage']} {record['step']}" + (f" {key.split('/')[-2]} {losses[key]:.4f}" if key else "")


def cell_state(folder: Path, scheduler_state: str | None) -> str:
    if (folder / "COMPLETED").exists():
        return "completed"
    if scheduler_state and scheduler_state not in records.TERMINAL:
        return scheduler_state.lower()  # pending, running, requeued, ...
    if (folder / "FAILED").exists():
        return "failed"
    if scheduler_state:
        return scheduler_state.lower()  # ended without a marker: cancelled, timeout, node_fail ...
    return "partial" if (folder / "config.yaml").exists() else "new"


def status_rows(sweep: Path) -> list[dict]:
    info = read_json(sweep / "sweep.json", {})
    out_dir = Path(info.get("out_dir") or sweep.parent.parent)
    cells = read_json(sweep / "cells.json", [])
    latest, states = {}, {}
    if info.get("launcher") == "slurm" and records.sacct_available():
        latest = records.latest_jobs(records.reconcile(out_dir))
        states = records.job_states({latest[c["cell_id"]][0] for c in cells if c["cell_id"] in latest})
    rows = []
    for c in cells:
        folder = out_dir / "cells" / c["cell_id"]
        job = latest.get(c["cell_id"], (None,))[0]
        attempts = (read_json(folder / "environment.json", {}) or {}).get("attempts", [])
        rows.append({
            "cell": c["cell_id"], "method": c.get("label", c.get("method")), "concepts": c.get("concepts") or "-",
            "ratio": c.get("ratio", "-"), "K": c.get("K") or "-", "seed": c.get("seed", "-"),
            "state": cell_state(folder, states.get(job)), "job": job or "-", "attempts": len(attempts),
            "latest": latest_value(folder),
        })
    return rows


def render(sweep: Path, rows: list[dict]) -> str:
    cols = ["cell", "method", "concepts", "ratio", "K", "seed", "state", "job", "attempts", "latest"]
    table = [cols] + [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    head = f"sweep {sweep.name}: {len(rows)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return "\n".join([head] + ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table])


def finalize(sweep: Path) -> str | None:
    """Every cell has ended: what a waiting sweep does at its end (once)."""
    from harness.cell import Cell
    from harness.sweeper import close_sweep
    from harness.tracking import Tracker

    if read_json(sweep / "sweep.json", {}).get("finalized"):
        return None
    configs = [OmegaConf.load(sweep / "configs" / f"{c['cell_id']}.yaml") for c in read_json(sweep / "cells.json", [])]
    return close_sweep(sweep, [Cell(cfg) for cfg in configs], Tracker(configs[0])) if configs else None


# -- commands ---------------------------------------------------------------------------------
def cmd_status(args) -> int:
    sweep = find_sweep(args.out_dir, args.sweep)
    while True:
        rows = status_rows(sweep)
        print(render(sweep, rows), flush=True)
        ended = all(r["state"] in ENDED for r in rows)
        if ended and (table := finalize(sweep)):
            print(table)
        if not args.watch or ended:
            return 0 if all(r["state"] == "completed" for r in rows) or not ended else 1
        time.sleep(args.watch)


def cmd_tail(args) -> int:
    folder = find_cell(args.out_dir, args.cell)
    log = folder / "train.log"
    if not log.exists():  # the job has not reached the cell yet: its scheduler log
        latest = records.latest_jobs(records.load_submissions(args.out_dir)).get(folder.name)
        logs = sorted((Path(args.out_dir) / "slurm" / latest[0]).glob("*_log.*")) if latest else []
        if not logs:
            print(f"cell {folder.name}: no log yet", file=sys.stderr)
            return 1
        log = logs[-1]
    lines = log.read_text(errors="replace").splitlines()
    print("\n".join(lines[-args.lines:]), flush=True)
    position = log.stat().st_size
    while args.follow and not ((folder / "COMPLETED").exists() or (folder / "FAILED").exists()):
        time.sleep(1.0)
        with open(log, errors="replace") as handle:
            handle.seek(position)
            chunk = handle.read()
            position = handle.tell()
        if chunk:
            print(chunk, end="", flush=True)
    return 0


def cmd_cancel(args) -> int:
    out_dir = Path(args.out_dir)
    latest = records.latest_jobs(records.reconcile(out_dir))
    if (out_dir / "sweeps" / args.target).exists() or not list((out_dir / "cells").glob(f"{args.target}*")):
        sweep = find_sweep(out_dir, args.target)
        targets = [c["cell_id"] for c in read_json(sweep / "cells.json", [])]
    else:
        targets = [find_cell(out_dir, args.target).name]
    jobs = [latest[c][0] for c in targets if c in latest]
    states = records.job_states(jobs)
    active = [j for j in jobs if states.get(j) and states[j] not in records.TERMINAL]
    if not active:
        print("nothing to cancel: no queued or running job")
        return 0
    subprocess.run(["scancel", *active], check=True, timeout=60)
    print(f"cancelled {len(active)} job(s): {' '.join(active)}")
    return 0


def cmd_retry(args) -> int:
    """Run the sweep's command again: completed cells are skipped, queued or running ones are
    left alone, failed and missing ones are submitted."""
    sweep = find_sweep(args.out_dir, args.sweep)
    info = read_json(sweep / "sweep.json", {})
    command = [sys.executable, "-m", "harness", "-m", *info["arguments"]]
    print(" ".join(command[1:]), flush=True)
    return subprocess.run(command, cwd=info.get("cwd")).returncode


def find_study(out_dir: Path, name: str | None) -> Path:
    """A tuning study's folder: the one named (a prefix will do), else the latest."""
    found = sorted((Path(out_dir) / "optuna").glob("*/study.json"), key=lambda p: p.stat().st_mtime)
    if name:
        found = [p for p in found if p.parent.name.startswith(name)]
    if not found:
        fail(f"no tuning study{' ' + name if name else ''} under {out_dir}/optuna: run a tune_* sweep there first")
    return found[-1].parent


def cmd_study(args) -> int:
    from harness.tune.study import status

    print(status(find_study(args.out_dir, args.study)))
    return 0


def cmd_dashboard(args) -> int:
    """optuna-dashboard on a study's storage, opened as the workers open it (a journal file
    takes the workers' lock: the dashboard's own default lock is another one), on 127.0.0.1."""
    try:
        import optuna_dashboard
    except ImportError:
        fail("optuna-dashboard is not installed: pip install 'optuna-dashboard>=0.21,<0.22' (or pip install -e '.[dashboard]')")
    from harness.compose import compose_config
    from harness.tune.spec import parse
    from harness.tune.study import storage_for

    folder = find_study(args.out_dir, args.study)
    spec = parse(compose_config(read_json(folder / "study.json", {})["arguments"]))
    print(f"study {folder.name}: http://127.0.0.1:{args.port}/dashboard (Ctrl-C stops it)", flush=True)
    optuna_dashboard.run_server(storage_for(spec, folder), host="127.0.0.1", port=args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.jobs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default="outputs", type=Path, help="the sweep's out_dir (default: outputs)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("status", help="one row per cell")
    p.add_argument("sweep", nargs="?")
    p.add_argument("--watch", type=float, default=0, help="refresh every S seconds until every cell has ended")
    p = sub.add_parser("tail", help="a cell's log")
    p.add_argument("cell")
    p.add_argument("-n", "--lines", type=int, default=40)
    p.add_argument("-f", "--follow", action="store_true")
    p = sub.add_parser("cancel", help="cancel a sweep's or a cell's queued and running jobs")
    p.add_argument("target")
    p = sub.add_parser("retry", help="submit a sweep's failed and missing cells again")
    p.add_argument("sweep", nargs="?")
    p = sub.add_parser("study", help="a tuning study: trials per state, workers, the front (default: the latest)")
    p.add_argument("study", nargs="?")
    p = sub.add_parser("dashboard", help="optuna-dashboard on a tuning study (default: the latest), on 127.0.0.1")
    p.add_argument("study", nargs="?")
    p.add_argument("--port", type=int, default=8080)
    # --out-dir is accepted before or after the command
    for action in sub.choices.values():
        action.add_argument("--out-dir", default=argparse.SUPPRESS, type=Path)
    args = parser.parse_args(argv)
    return {"status": cmd_status, "tail": cmd_tail, "cancel": cmd_cancel, "retry": cmd_retry, "study": cmd_study,
            "dashboard": cmd_dashboard}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
