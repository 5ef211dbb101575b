"""The tuning loop's own cost: what a worker spends per trial outside the cell (opening the
study, which replays the journal; ask; tell) with 10, 100 and 1,000 trials already in the
journal, against the wall time of a smoke cell (docs/bench/cpu.json).

    python -m harness.bench.tune [--sizes 10,100,1000] [--dest docs/bench]

The study is tune_bilevel's (6 parameters, 2 objectives, TPE with constant liar); the journal
is filled with told trials of random values (the sampler's cost grows with the trials it
models, not with what they scored)."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from harness.bench.measure import machine


def measure(sizes: list[int], repeats: int = 5) -> dict:
    import random

    import optuna

    from harness.compose import compose_config
    from harness.tune.spec import parse
    from harness.tune.study import open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = parse(compose_config(["sweep=tune_bilevel"]))
    rows = {}
    rng = random.Random(0)
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            study = open_study("bench", spec, folder)
            for _ in range(n):  # fill the journal (not timed)
                trial = study.ask()
                for p in spec.space:
                    p.suggest(trial)
                study.tell(trial, [rng.random() * 10, rng.random() * 100])
            opens, asks, tells = [], [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                study = open_study("bench", spec, folder)  # a worker's start: replays the journal
                t1 = time.perf_counter()
                trial = study.ask()
                for p in spec.space:
                    p.suggest(trial)
                t2 = time.perf_counter()
                study.tell(trial, [rng.random() * 10, rng.random() * 100])
                t3 = time.perf_counter()
                opens.append(t1 - t0)
                asks.append(t2 - t1)
                tells.append(t3 - t2)
            rows[n] = {"open_s": statistics.median(opens), "ask_s": statistics.median(asks), "tell_s": statistics.median(tells),
                       "journal_bytes": (folder / "journal.log").stat().st_size}
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.bench.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--dest", default="docs/bench")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = measure(sizes)
    cpu = Path(args.dest) / "cpu.json"
    cell_s = None
    if cpu.exists():
        cell_s = json.loads(cpu.read_text()).get("cell", {}).get("wall_s")
    result = {"kind": "tune", "command": f"python -m harness.bench.tune --sizes {args.sizes}", "machine": machine(__import__("torch").device("cpu")),
              "rows": {str(k): v for k, v in rows.items()}, "smoke_cell_wall_s": cell_s}
    lines = ["# Tuning loop cost per trial", "", f"Regenerate: `python -m harness.bench.tune --sizes {args.sizes}` (medians of 5).", "",
             "| trials in the journal | open (replay) s | ask s | tell s | per trial s | share of a smoke cell | journal |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for n, r in rows.items():
        per = r["ask_s"] + r["tell_s"]  # a worker opens the study once; each trial costs ask + tell
        share = f"{per / cell_s:.2%}" if cell_s else "–"
        lines.append(f"| {n} | {r['open_s']:.3f} | {r['ask_s']:.3f} | {r['tell_s']:.3f} | {per:.3f} | {share} | {r['journal_bytes'] / 1e6:.2f} MB |")
    if cell_s:
        lines += ["", f"Smoke cell wall time: {cell_s:.1f} s (docs/bench/cpu.json). A worker opens the study once, then pays ask + tell per trial."]
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "tune.json").write_text(json.dumps(result, indent=1))
    (dest / "tune.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
