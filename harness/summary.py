"""A sweep's cells summarised: a row per setting (the mean over its seeds with an interval that
includes evaluation noise), the columns every table shares, and the overview table a sweep
prints and writes at its end. `analysis.tables` builds the paper's tables from the same rows."""

from __future__ import annotations

import math
import statistics

from harness.errors import ConfigError
from harness.record import Record, kernel_note, kernel_split
from harness.render import Column, Mark, Stat, Table, quantile


QUALITY = [Column("FID", "fid", "min"), Column("CLIP", "clip_score", "max"), Column("CMMD", "cmmd", "min")]
COST = [Column("cell s", "cost/wall_s"), Column("method s", "method_wall_s"), Column("CPU h", "cost/cpu_h"),
        Column("GPU h", "cost/gpu_h"), Column("peak GB", "peak_gb")]


# Erased or only hidden (eval.robustness, harness/robustness): shown where cells were probed
ROBUSTNESS = [Column("Pre-ASR", "robust/pre_asr_erased", "min"), Column("ASR soft", "robust/asr_soft_erased", "min"),
              Column("ASR discrete", "robust/asr_discrete_erased", "min"),
              Column("relearn steps", "robust/relearn_steps_erased", "max"),
              Column("neighbours kept %", "robust/neighbour_retention", "max")]


def suppression(suffix: str = "erased") -> list[Column]:
    return [Column("CLIP to concept", f"clip_concept_{suffix}", "min"), Column("CP", f"cp_{suffix}", "max"),
            Column("CSD", f"csd_{suffix}", "min"), Column("presence erased", f"presence_{suffix}", "min"),
            Column("presence retained", "presence_retained", "max")]


# -- values of a group of cells -------------------------------------------------------------
def cell_value(record: Record, key: str, by_id: dict[str, Record], erased=None, retained=None):
    """One cell's value of a table key (metrics, per-concept means, derived cost figures)."""
    if key == "peak_gb":
        return record.metrics.get("cost/peak_gpu_gb", record.metrics.get("cost/peak_rss_gb"))
    if key == "method_wall_s":  # what the method cost: a two-stage cell adds its stage 1 (the distill cell)
        own = record.metrics.get("cost/wall_s")
        if own is None or not record.kind.continues_reference:
            return own
        first = by_id.get(record.depends_on or "")
        return own + first.metrics["cost/wall_s"] if first and "cost/wall_s" in first.metrics else None
    erased = record.concepts if erased is None else erased
    retained = record.retained if retained is None else retained
    for side, names in (("_erased", erased), ("_retained", retained)):
        if key.endswith(side):
            stem = key[: -len(side)]
            values = [record.metrics[f"{stem}/{c}"] for c in names if f"{stem}/{c}" in record.metrics]
            return sum(values) / len(values) if values else None
    return record.metrics.get(key)


def cell_se(record: Record, key: str, erased=None, retained=None) -> float | None:
    """The evaluation noise of one cell's value (`se/<metric>`, recorded by the cell): a mean
    over concepts owes √(Σ se²)/m; None where the cell recorded none (cost figures, old runs)."""
    erased = record.concepts if erased is None else erased
    retained = record.retained if retained is None else retained
    for side, names in (("_erased", erased), ("_retained", retained)):
        if key.endswith(side):
            stem = key[: -len(side)]
            present = [c for c in names if f"{stem}/{c}" in record.metrics]
            ses = [record.metrics.get(f"se/{stem}/{c}") for c in present]
            return math.sqrt(sum(x * x for x in ses)) / len(ses) if ses and None not in ses else None
    return record.metrics.get(f"se/{key}")


INTERVAL_NOTE = ("± : 95% interval of the row's mean: t(k − 1) × the spread over seeds / √k (4.30 at 3 seeds), or 1.96 × the cells' own "
                 "evaluation noise (jackknife or binomial se over its images) / √k where that is wider. Bold: better than every other row by more than "
                 "3 se of the difference and by a Welch t-test at p < 0.05. n = completed / planned cells.")
FLOOR_LABEL = "real renders (noise floor)"


def floor_record(teacher: Record) -> Record | None:
    """The teacher cell's `floor/*` metrics (real renders of the evaluation prompts measured as
    if generated) as a record of their own: the tables' noise-floor row."""
    metrics = {k[len("floor/"):]: v for k, v in teacher.metrics.items() if k.startswith("floor/")}
    if teacher.state != "completed" or not metrics:
        return None
    return Record(teacher.cell + "-floor", "completed", teacher.params, metrics, teacher.run_id, None, teacher.kernel_set)


NEVER_LEARNED_LABEL = "never learned (robustness floor)"


def never_learned(records: list[Record]) -> list[Record]:
    """The probes of the floor model (`robust/floor/*`: a model that never learned the erased
    concepts, harness/robustness/floor.py) as records of their own, one per concept set, ratio
    (relearning's target is the distilled model's) and seed: a reference row beside which an
    eraser's ASR and relearning steps read as gone or only hidden."""
    out: dict = {}
    for r in records:
        if r.state != "completed":
            continue
        metrics = {pre.replace("floor/", "") + k[len(pre):]: v for k, v in r.metrics.items()
                   for pre in ("robust/floor/", "se/robust/floor/") if k.startswith(pre)}
        if metrics:
            out.setdefault((r.concepts, r.ratio, r.seed), Record(f"{r.cell}-never-learned", "completed", r.params, metrics, r.run_id,
                                                                 None, r.kernel_set))
    return list(out.values())


def summarize(members: list[Record], key: str, by_id, **concepts):
    """A row's value: the mean over its completed cells, with the standard error of that mean.
    One cell: its evaluation noise. Several (seeds): the larger of the spread over them / √k
    (training and evaluation noise, as each seed draws its own evaluation images) and the
    cells' own evaluation noise / √k, so a lucky agreement of three seeds cannot hide it.
    Larger by the interval each gives: the seeds' se is estimated from k values (Student's t,
    k − 1 degrees of freedom: 4.30 se at 3 seeds), the evaluation noise's from hundreds of
    images (the normal's 1.96)."""
    done = [m for m in members if m.state == "completed"]
    pairs = [(v, cell_se(m, key, **concepts)) for m in done if (v := cell_value(m, key, by_id, **concepts)) is not None]
    if not pairs:
        return None
    values, ses = [v for v, _ in pairs], [e for _, e in pairs]
    k = len(values)
    sd = statistics.stdev(values) if k > 1 else None
    within = math.sqrt(sum(e * e for e in ses) / k) / math.sqrt(k) if None not in ses else None
    se, df = within, None
    if k > 1:
        between = sd / math.sqrt(k)
        if within is None or quantile(k - 1) * between > quantile(None) * within:
            se, df = between, k - 1
    return Stat(statistics.fmean(values), sd, k, se, df)


def row_of(label: str, members: list[Record], columns: list[Column], by_id, **concepts) -> dict:
    done = sum(m.state == "completed" for m in members)
    row = {"method": label, "n": f"{done}/{len(members)}"}
    if done == 0:  # nothing to show: say why, in the first metric column
        states = sorted({m.state for m in members})
        first = next(c.key for c in columns if c.key not in ("method", "n", "K", "ratio", "concepts", "loss"))
        row[first] = Mark(", ".join(states))
        return row
    for col in columns:
        if col.key not in row:
            row[col.key] = summarize(members, col.key, by_id, **concepts)
    return row


def group(records: list[Record], key) -> dict:
    out: dict = {}
    for r in records:
        out.setdefault(key(r), []).append(r)
    return out


def with_kernel(label: str, kernel_set: str | None) -> str:
    return f"{label} [{kernel_set}]" if kernel_set else label


def order(record: Record) -> int:
    """Where a record's rows sit among a table's methods (the method's `order`)."""
    try:
        return record.kind.order
    except ConfigError:  # a record of a method this checkout does not have: last
        return 1_000


def by_id_map(records):
    return {r.cell: r for r in records}


def drop_empty(columns: list[Column], rows: list[dict]) -> list[Column]:
    """A metric column shows when some row has it (image metrics need eval.backbone)."""
    return [c for c in columns if c.key in ("method", "n", "K", "cells") or any(r.get(c.key) is not None for r in rows)]


def overview(records: list[Record], per_cell: bool = False) -> Table:
    """Every setting of a sweep in one table (what a sweep prints at its end); `per_cell`: one
    row per cell instead of one per setting."""
    by_id = by_id_map(records)
    columns = [Column("method", "method"), Column("concepts", "concepts"), Column("ratio", "ratio"), Column("K", "K"),
               Column("n", "n"), Column("params (M)", "pruning/params_m"), Column("MACs %", "pruning/macs_pct"),
               *QUALITY, *suppression(), *ROBUSTNESS, Column("held-out MSE", "heldout_mse", "min"),
               Column("align erased", "alignment_erased", "min"), Column("align retained", "alignment_retained", "max"),
               Column("cell s", "cost/wall_s"), Column("cells", "cells")]
    kernel = kernel_split(records)
    settings = group(records, lambda r: (r.label, r.concepts if r.erases else (), r.ratio, r.K, r.cell if per_cell else "", kernel(r) or ""))
    rows, reference = [], set()
    for key in sorted(settings, key=lambda k: (k[2] if k[2] is not None else -1, order(settings[k][0]), k[0], k[1], k[3] or 0, k[4], k[5])):
        label, concepts, ratio, K, _, ks = key
        members = settings[key]
        row = row_of(with_kernel(label, ks), members, columns, by_id)
        row.update(concepts="+".join(concepts) or "–", ratio=ratio, K=K, cells=" ".join(m.cell for m in members))
        if not members[0].prunes:  # the unpruned teacher: a reference row, never bold
            reference.add(len(rows))
        rows.append(row)
    for (concepts, ratio), floors in sorted(group(never_learned(records), lambda r: (r.concepts, r.ratio)).items()):
        reference.add(len(rows))
        rows.append({**row_of(NEVER_LEARNED_LABEL, floors, columns, by_id), "concepts": "+".join(concepts), "ratio": ratio,
                     "K": None, "cells": " ".join(f.cell.removesuffix("-never-learned") for f in floors)})
    notes = [INTERVAL_NOTE, kernel_note(records)]
    if any(r["method"] == NEVER_LEARNED_LABEL for r in rows):
        notes.append(f"{NEVER_LEARNED_LABEL}: the probes of a model that never learned the concept (same prompts, seeds and "
                     "budget; relearning to the same target): where an eraser's ASR and relearn steps sit at it, the concept is gone.")
    return Table("All cells", drop_empty(columns, rows), rows, notes, reference)
