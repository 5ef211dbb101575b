"""The paper's tables from a sweep's records (MLflow alone, or a sweep's cells at its end).

    python -m analysis.tables --sweep paper_table                 # outputs/mlflow.db, its latest paper_table sweep
    python -m analysis.tables --sweep smoke --out-dir runs/a --paper
    python -m analysis.tables --tracking-uri http://host:5000 --filter "tags.\\`harness.seed\\` = '0'"

Tables: style removal per pruning ratio and concept set (averaged over the erased concepts,
then per concept), pruning ratio × lower-level loss, the K ablation of bilevel, and where cells
were probed (eval.robustness) their ranking by presence and by attack and the attack's budget
(ASR against its iterations, from each cell's robustness.json artifact); each as
Markdown, LaTeX (booktabs) and CSV under <out_dir>/analysis/<sweep>/, logged to the sweep's
MLflow parent run. Cells that differ only by seed make one row (mean ± sd, count shown);
planned cells with no finished run are marked, never dropped."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from analysis import paper
from analysis.records import AnalysisError, Study
from harness.record import Record, kernel_note, kernel_split
from harness.render import Column, Mark, Stat, Table, beyond_noise, difference, latex, markdown, quantile, to_csv
from harness.summary import (COST, FLOOR_LABEL, INTERVAL_NOTE, NEVER_LEARNED_LABEL, QUALITY, ROBUSTNESS, by_id_map, drop_empty,
                             floor_record, group, never_learned, order, overview, row_of, suppression, summarize, with_kernel)

# -- the tables ---------------------------------------------------------------------------
def style_removal(records: list[Record], published: bool = False) -> list[Table]:
    """Per pruning ratio and concept set: the references (teacher, the un-erased student), then
    every erasing method in its declared order; averaged over the erased concepts, then one table per erased concept."""
    by_id, tables = by_id_map(records), []
    erasing = [r for r in records if r.erases]
    for (ratio, concepts), block in sorted(group(erasing, lambda r: (r.ratio, r.concepts)).items()):
        retained = block[0].retained
        # the references: the unpruned teacher, and the un-erased student at this ratio
        refs = [r for r in records if not r.prunes] + [r for r in records if r.prunes and not r.erases and r.ratio == ratio]
        kernel = kernel_split(refs + block)
        settings = group(refs + block, lambda r: (r.label, r.K, kernel(r)))
        keys = sorted(settings, key=lambda k: (order(settings[k][0]), k[0], k[1] or 0, k[2] or ""))
        # titles are unique per table: a concept erased alone and the same concept within a set are two tables
        both = "+".join(concepts)
        views = [(f"{both} erased, averaged", concepts, "erased")] if len(concepts) > 1 else []
        views += [(f"{c} erased" if len(concepts) == 1 else f"{both} erased, {c}", (c,), "erased") for c in concepts]
        for view, erased, _ in views:
            columns = [Column("method", "method"), Column("K", "K"), *suppression(), *ROBUSTNESS, *QUALITY, Column("n", "n"), *COST]
            rows, reference = [], set()
            if floors := never_learned(block):  # the robustness probes' floor: a model that never learned the concepts
                reference.add(len(rows))
                rows.append({**row_of(NEVER_LEARNED_LABEL, floors, columns, by_id, erased=erased, retained=retained), "K": None})
            for label, K, ks in keys:
                members = settings[(label, K, ks)]
                row = row_of(with_kernel(label, ks), members, columns, by_id, erased=erased, retained=retained)
                row["K"] = K
                if not members[0].prunes:
                    reference.add(len(rows))
                    rows.append(row)
                    floors = [f for m in members if (f := floor_record(m))]
                    if floors:
                        reference.add(len(rows))
                        rows.append({**row_of(FLOOR_LABEL, floors, columns, by_id, erased=erased, retained=retained), "K": None})
                    continue
                rows.append(row)
                pub = members[0].kind.published(members[0].params) if published and any(m.real_scale for m in members) else None
                if pub and (len(concepts) > 1 and view.endswith("averaged") or len(concepts) == 1):
                    reference.add(len(rows))
                    rows.append({"method": f"{label} (paper)", "_italic": True, **pub})
            if published and any(m.real_scale for m in block) and (len(concepts) == 1 or view.endswith("averaged")):
                for name, values in paper.OTHER_ERASERS.items():
                    reference.add(len(rows))
                    rows.append({"method": f"{name} (paper)", "_italic": True, **values})
            scale = "real" if any(m.real_scale for m in block) else "world"
            notes = [f"Pruning ratio {ratio} (torch-pruning), {scale} scale; erased: {', '.join(concepts)}; "
                     f"retained: {', '.join(retained) or '–'}.", INTERVAL_NOTE,
                     "CSD and CP are against the distilled model's images (100 and 0 for it). Teacher: not pruned; it and the "
                     "noise floor (real renders of the same prompts, measured as if generated) are references, never bold.",
                     kernel_note(refs + block)]
            if any(r.get("_italic") for r in rows):
                notes.append(f"Rows marked (paper): {paper.SOURCE}.")
            tables.append(Table(f"Style removal, ratio {ratio}, {view}", drop_empty(columns, rows), rows, notes, reference))
    return tables


def ratio_loss(records: list[Record]) -> list[Table]:
    """Fine-tuning quality by pruning ratio (columns) and lower-level loss (rows)."""
    distill = [r for r in records if r.prunes and not r.erases]  # the un-erased students
    if not distill:
        return []
    by_id = by_id_map(records)
    ratios = sorted({r.ratio for r in distill})
    metrics = [Column("FID", "fid", "min"), Column("CLIP", "clip_score", "max"), Column("held-out MSE", "heldout_mse", "min")]
    columns = [Column("loss", "method")]
    for ratio in ratios:
        columns += [Column(f"{c.name} @{ratio}", f"{c.key}@{ratio}", c.better) for c in metrics] + [Column(f"n @{ratio}", f"n@{ratio}")]
    rows, kernel = [], kernel_split(distill)
    for (loss, ks), members in sorted(group(distill, lambda r: (r.loss, kernel(r) or "")).items()):
        row = {"method": with_kernel(loss, ks)}
        for ratio in ratios:
            at = [m for m in members if m.ratio == ratio]
            done = sum(m.state == "completed" for m in at)
            row[f"n@{ratio}"] = f"{done}/{len(at)}"
            for c in metrics:
                row[f"{c.key}@{ratio}"] = summarize(at, c.key, by_id) if done else (Mark(", ".join(sorted({m.state for m in at}))) if at and c is metrics[0] else None)
        rows.append(row)
    params = {r.ratio: (r.metrics.get("pruning/params_m"), r.metrics.get("pruning/macs_pct")) for r in distill if r.state == "completed"}
    notes = ["Distill cells (no erasing). " + "; ".join(f"ratio {k}: {v[0]:.3g} M params, {v[1]:.0f}% MACs" for k, v in sorted(params.items()) if v[0]),
             kernel_note(distill)]
    return [Table("Pruning ratio × lower-level loss", [c for c in columns if any(r.get(c.key) is not None for r in rows) or c.key == "method"],
                  rows, notes)]


def k_ablation(records: list[Record]) -> list[Table]:
    """Methods with an inner-steps key (bilevel: lower steps per upper step, K), per ratio,
    concept set and method setting."""
    bilevel = [r for r in records if r.K is not None]
    by_id, tables = by_id_map(records), []
    for (ratio, concepts), block in sorted(group(bilevel, lambda r: (r.ratio, r.concepts)).items()):
        columns = [Column("method", "method"), Column("K", "K"), *suppression(), *QUALITY, Column("n", "n"),
                   Column("cell s", "cost/wall_s")]
        rows, kernel = [], kernel_split(block)
        for (label, K, ks), members in sorted(group(block, lambda r: (r.label, r.K, kernel(r) or "")).items()):
            rows.append({**row_of(with_kernel(label, ks), members, columns, by_id), "K": K})
        tables.append(Table(f"K ablation, ratio {ratio}, {'+'.join(concepts)}", drop_empty(columns, rows), rows,
                            ["K: lower-level steps per upper-level step.", kernel_note(block)]))
    return tables


# -- erased or only hidden: does attacking change which eraser looks best? -------------------
RANKED_BY = [("presence erased", "presence_erased"), ("ASR soft", "robust/asr_soft_erased"),
             ("ASR discrete", "robust/asr_discrete_erased")]


def _kendall_tau(first: list[str], second: list[str]) -> float:
    """Kendall's τ between two orderings of the same labels (1: the same order, −1: reversed)."""
    pos = {label: i for i, label in enumerate(second)}
    pairs = [(a, b) for i, a in enumerate(first) for b in first[i + 1:]]
    agree = sum(1 if pos[a] < pos[b] else -1 for a, b in pairs)
    return agree / len(pairs)


def _order_note(rows: list[dict], name: str, key: str) -> str:
    """How the order by `key` differs from the order by plain presence: τ, and each pair the two
    put the other way round, with both differences (± the 95% interval, Welch's t) and whether
    each is beyond noise by the tables' bold rule (harness.render.beyond_noise)."""
    by_presence = sorted(rows, key=lambda r: r["presence_erased"].mean)
    by_attack = sorted(rows, key=lambda r: r[key].mean)
    tau = _kendall_tau([r["_setting"] for r in by_presence], [r["_setting"] for r in by_attack])
    flips = []
    for i, a in enumerate(by_presence):
        for b in by_presence[i + 1:]:
            if a[key].mean <= b[key].mean:
                continue
            parts = []
            for what, k in (("presence", "presence_erased"), (name, key)):
                d, se, df = difference(a[k], b[k])
                hw = None if se is None else quantile(df) * se
                beyond = "no interval" if se is None else ("beyond noise" if beyond_noise(d, se, df) else "within noise")
                parts.append(f"{what} {d:+.1f}" + ("" if hw is None else f" ± {hw:.1f}") + f" ({beyond})")
            flips.append(f"{a['_setting']} vs {b['_setting']}: " + ", ".join(parts))
    head = f"By {name}: {' < '.join(r['_setting'] for r in by_attack)}; Kendall τ with the presence order {tau:+.2f}."
    return head + (" Pairs in the other order (second − first): " + "; ".join(flips) + "." if flips else " Same order.")


def erased_or_hidden(records: list[Record]) -> list[Table]:
    """Per pruning ratio and concept set with probed cells (eval.robustness): the erasing methods
    ranked by plain presence of the erased concepts and by the attacks' success rates, with
    each row's interval, and a note per attack on where the two orders differ and whether that
    difference is beyond noise. The floor row (a model that never learned the concepts) is a
    reference, never ranked."""
    by_id, tables = by_id_map(records), []
    probed = [r for r in records if r.erases and any(k.startswith("robust/asr_soft/") for k in r.metrics)]
    for (ratio, concepts), block in sorted(group(probed, lambda r: (r.ratio, r.concepts)).items()):
        columns = [Column("method", "method"), Column("K", "K")]
        for name, key in RANKED_BY:
            columns += [Column(name, key, "min"), Column("rank", f"{key}#rank")]
        columns += [Column("Pre-ASR", "robust/pre_asr_erased", "min"), Column("relearn steps", "robust/relearn_steps_erased", "max"),
                    Column("n", "n")]
        kernel = kernel_split(block)
        settings = group(block, lambda r: (r.label, r.K, kernel(r)))
        rows = []
        for (label, K, ks), members in sorted(settings.items(), key=lambda kv: (order(kv[1][0]), kv[0][0], kv[0][1] or 0, kv[0][2] or "")):
            row = {**row_of(with_kernel(label, ks), members, columns, by_id, erased=concepts), "K": K}
            row["_setting"] = with_kernel(label, ks) + (f" K={K}" if K is not None else "")
            rows.append(row)
        ranked = [r for r in rows if all(isinstance(r.get(k), Stat) for _, k in RANKED_BY)]
        for _, key in RANKED_BY:
            for i, r in enumerate(sorted(ranked, key=lambda r: r[key].mean)):
                r[f"{key}#rank"] = i + 1
        notes = [f"Pruning ratio {ratio}; erased: {', '.join(concepts)}. Lower is better for presence and ASR: rank 1 is the "
                 "method whose erasure shows least (plain) or survives the attack best.", INTERVAL_NOTE]
        if len(ranked) > 1:
            notes += [_order_note(ranked, name, key) for name, key in RANKED_BY[1:]]
        reference = set()
        if floors := never_learned(block):
            reference.add(len(rows))
            rows.append({**row_of(NEVER_LEARNED_LABEL, floors, columns, by_id, erased=concepts), "K": None})
        notes.append(kernel_note(block))
        tables.append(Table(f"Erased or hidden, ratio {ratio}, {'+'.join(concepts)}: ranking by presence and by attack",
                            drop_empty(columns, rows), rows, notes, reference))
    return tables


# -- is the attack's budget enough? ASR against its iterations ------------------------------
def _curves(probe: dict, concepts) -> dict[str, dict[int, float]]:
    """Per attack, ASR at each checked iteration, averaged over the erased concepts (robustness.json)."""
    out: dict[str, dict[int, float]] = {}
    for kind in ("soft", "discrete"):
        per = [{p["iteration"]: p["asr"] for p in probe["concepts"][c][kind]["curve"]} for c in concepts if c in probe.get("concepts", {})]
        if per and all(set(c) == set(per[0]) for c in per):
            out[kind] = {i: sum(c[i] for c in per) / len(per) for i in per[0]}
    return out


def _ceiling(probe: dict, concepts) -> dict[str, float] | None:
    """What the attacks can bring back at most: the original model's presence on the probe's
    prompts and seeds (`original_hits`; its image is what the attack reconstructs), and per
    attack the % of those prompts it did bring back by its last check, averaged over the
    erased concepts. None where a record has no `original_hits` (or the original shows none)."""
    found = [probe["concepts"][c] for c in concepts if c in probe.get("concepts", {})]
    if not found or not all(f.get("original_hits") and any(f["original_hits"]) for f in found):
        return None
    out = {"ceiling": statistics.fmean(100 * sum(f["original_hits"]) / len(f["original_hits"]) for f in found)}
    for kind in ("soft", "discrete"):
        if all(len(f.get(kind, {}).get("hits") or []) == len(f["original_hits"]) for f in found):
            out[kind] = statistics.fmean(100 * sum(h and o for h, o in zip(f[kind]["hits"], f["original_hits"])) / sum(f["original_hits"])
                                         for f in found)
    return out


def _kendall_tau_b(x: list[float], y: list[float]) -> float | None:
    """Kendall's τ-b between two scorings of the same items (ties allowed: ASRs of 32 prompts
    tie often); None where either scoring is constant."""
    concordant = discordant = tied_x = tied_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tied_x += 1
            elif dy == 0:
                tied_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = ((concordant + discordant + tied_x) * (concordant + discordant + tied_y)) ** 0.5
    return (concordant - discordant) / denominator if denominator else None


def _mean_stat(values: list[float]) -> Stat:
    """Mean over cells ± its t interval (each cell one value; their spread holds every noise)."""
    k = len(values)
    sd = statistics.stdev(values) if k > 1 else None
    return Stat(statistics.fmean(values), sd, k, None if sd is None else sd / k ** 0.5, k - 1 if k > 1 else None)


def attack_budget(records: list[Record], probe_of) -> list[Table]:
    """Per attack: ASR at each checked iteration of the attack (ASR is cumulative: an attacker
    stops at its first success), per erasing setting and ratio (mean over seeds) and over every
    probed cell, and what the last doubling of the budget still added. A curve that still rises
    at its last check means the printed ASR is a lower bound. `probe_of(record)` gives a probed
    cell's robustness.json (from MLflow: its artifact)."""
    probed = [r for r in records if r.state == "completed" and r.erases and any(k.startswith("robust/asr_soft/") for k in r.metrics)]
    probes = {r.cell: probe for r in probed if (probe := probe_of(r))}
    curves = {r.cell: c for r in probed if r.cell in probes and (c := _curves(probes[r.cell], r.concepts))}
    ceilings = {r.cell: c for r in probed if r.cell in probes and (c := _ceiling(probes[r.cell], r.concepts))}
    tables = []
    for kind in ("soft", "discrete"):
        cells = [r for r in probed if kind in curves.get(r.cell, {})]
        budgets = {tuple(sorted(curves[r.cell][kind])) for r in cells}
        if len(budgets) != 1 or len(its := list(next(iter(budgets)))) < 2:  # other budgets are not one curve; one check is no curve
            continue
        columns = [Column("method", "method"), Column("K", "K"), Column("ratio", "ratio"), Column("concepts", "concepts")]
        columns += [Column(f"ASR @{i}", f"asr@{i}") for i in its]
        columns += [Column(f"rise {a}→{b}", f"rise{a}") for a, b in zip(its, its[1:])]
        with_ceiling = all(kind in ceilings.get(r.cell, {}) for r in cells)  # (records from before original_hits: none)
        if with_ceiling:
            columns += [Column("ceiling", "ceiling"), Column(f"of ceiling @{its[-1]}", "reached")]
        columns += [Column("n", "n")]

        def row(label, members, **fixed):
            values = [curves[r.cell][kind] for r in members]
            out = {"method": label, "n": f"{len(members)}", **fixed}
            for i in its:
                out[f"asr@{i}"] = _mean_stat([v[i] for v in values])
            for a, b in zip(its, its[1:]):
                out[f"rise{a}"] = _mean_stat([v[b] - v[a] for v in values])
            if with_ceiling:
                out["ceiling"] = _mean_stat([ceilings[r.cell]["ceiling"] for r in members])
                out["reached"] = _mean_stat([ceilings[r.cell][kind] for r in members])
            return out

        kernel = kernel_split(cells)
        rows = [row(with_kernel(label, ks), members, K=K, ratio=ratio, concepts="+".join(concepts))
                for (ratio, concepts, label, K, ks), members in sorted(group(cells, lambda r: (r.ratio, r.concepts, r.label, r.K, kernel(r) or "")).items(),
                                                                      key=lambda kv: (kv[0][0], kv[0][1], order(kv[1][0]), kv[0][2], kv[0][3] or 0))]
        rows.append(row("every probed cell", cells, K=None, ratio=None, concepts=None))
        last = rows[-1][f"rise{its[-2]}"]
        verdict = (f"Over all {last.n} probed cells the last increase of the budget ({its[-2]} → {its[-1]} iterations) still added "
                   f"{last.mean:.1f} ± {last.half_width or 0:.1f} points: " +
                   ("the curve has not flattened, so ASR at this budget is a lower bound." if last.half_width is not None and last.mean > last.half_width
                    else f"not distinguishable from 0: that doubling adds at most {last.mean + (last.half_width or 0):.1f} points "
                         "(the interval's upper end), so ASR at this budget is within that of what twice the budget finds."))
        notes = ["ASR in % of the probed prompts, cumulative over the checks; rise: ASR gained between two checks. "
                 "± : 95% interval of the mean over the row's cells (t, n − 1 df).", verdict]
        if with_ceiling:
            notes.append("ceiling: % of the probed prompts whose image from the original model (the image the attack "
                         f"reconstructs) shows the concept; of ceiling @{its[-1]}: % of those prompts the attack brought back.")
        if len(cells) >= 3:  # does a smaller budget rank the cells as the last one does?
            last_values = [curves[r.cell][kind][its[-1]] for r in cells]
            taus = [(i, _kendall_tau_b([curves[r.cell][kind][i] for r in cells], last_values)) for i in its[:-1]]
            notes.append(f"Ranking of the {len(cells)} cells: Kendall τ-b between their ASR at each check and at {its[-1]}: "
                         + ", ".join(f"@{i} {'–' if t is None else f'{t:+.2f}'}" for i, t in taus) + ".")
        notes.append(kernel_note(cells))
        tables.append(Table(f"Attack budget, {kind} attack: ASR against its iterations", columns, rows, notes))
    return tables


def paper_tables(records: list[Record], published: bool = False) -> list[Table]:
    return [*style_removal(records, published), *ratio_loss(records), *k_ablation(records), *erased_or_hidden(records)]


# -- outputs ------------------------------------------------------------------------------
def write(tables: list[Table], dest: Path, stem: str = "tables") -> dict[str, Path]:
    dest.mkdir(parents=True, exist_ok=True)
    paths = {"md": dest / f"{stem}.md", "tex": dest / f"{stem}.tex", "csv": dest / f"{stem}.csv"}
    paths["md"].write_text("\n".join(markdown(t) for t in tables))
    paths["tex"].write_text("\n".join(latex(t) for t in tables))
    paths["csv"].write_text(to_csv(tables))
    return paths


def default_uri(out_dir: str) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def analysis_dir(out_dir: str, study: Study) -> Path:
    return Path(out_dir) / "analysis" / study.name.replace("/", "_").replace(" ", "_")[:80]


def log_to_parent(study: Study, paths, artifact_path: str) -> None:
    """Attach outputs to the sweep's MLflow parent run (nothing to attach to for a filter)."""
    if study.parent_run_id is None:
        return
    from analysis.records import client_for

    client = client_for(study.tracking_uri)
    for path in paths:
        client.log_artifact(study.parent_run_id, str(path), artifact_path)


def probe_artifact(uri: str):
    """record -> its robustness.json, read from its MLflow run's artifacts (None where it has none)."""
    import json
    import tempfile

    from analysis.records import client_for

    client = client_for(uri)

    def probe_of(record: Record) -> dict | None:
        if not record.run_id:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            try:
                return json.loads(Path(client.download_artifacts(record.run_id, "robustness.json", tmp)).read_text())
            except Exception:  # no such artifact (a cell probed before it was logged): its curve is left out
                return None

    return probe_of


def common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", help="a sweep name (its latest sweep) or sweep id")
    parser.add_argument("--filter", help="an MLflow filter expression over cell runs (with or without --sweep)")
    parser.add_argument("--out-dir", default="outputs", help="the run's out_dir: its MLflow store and where outputs go (default: outputs)")
    parser.add_argument("--tracking-uri", help="an MLflow tracking URI (default: sqlite:///<out_dir>/mlflow.db)")
    parser.add_argument("--experiment", default="harness")
    parser.add_argument("--dest", help="folder for the outputs (default: <out_dir>/analysis/<sweep>)")
    parser.add_argument("--no-log", action="store_true", help="do not attach the outputs to the sweep's MLflow parent run")


def load_study(args) -> Study | None:
    """The study the command-line arguments name; None after one line on stderr when they name none."""
    from analysis.records import load

    try:
        return load(args.tracking_uri or default_uri(args.out_dir), args.sweep, args.filter, args.experiment)
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.tables", description=__doc__.split("\n\n")[0])
    common_args(parser)
    parser.add_argument("--paper", action="store_true", help="print the paper's published numbers beside real-scale rows")
    parser.add_argument("--format", choices=("md", "tex", "csv"), default="md", help="what to print (all three are written)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    if (study := load_study(args)) is None:
        return 2
    tables = paper_tables(study.records, args.paper)
    tables += attack_budget(study.records, probe_artifact(study.tracking_uri))
    if not tables:
        tables = [overview(study.records)]
    if args.paper and not any(r.real_scale for r in study.records):
        print("note: no real-scale (model=sd21) cells in this sweep: published numbers are shown beside those only", file=sys.stderr)
    dest = Path(args.dest) if args.dest else analysis_dir(args.out_dir, study)
    paths = write(tables, dest)
    if not args.no_log:
        log_to_parent(study, paths.values(), "tables")
    printed = {"md": lambda: "\n".join(markdown(t) for t in tables), "tex": lambda: "\n".join(latex(t) for t in tables),
               "csv": lambda: to_csv(tables)}[args.format]()
    print(printed)
    states = {s: sum(r.state == s for r in study.records) for s in ("completed", "failed", "running", "missing")}
    print(f"{study.name}: {len(study.records)} cells ({', '.join(f'{v} {k}' for k, v in states.items() if v)}); "
          f"{len(tables)} tables in {time.perf_counter() - t0:.1f} s: {dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
