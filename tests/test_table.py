"""Tables from records: seeds make one row of mean ± sd, best values bold, missing cells
marked, the paper's numbers beside real-scale rows, three renderings."""

from __future__ import annotations

import json

import pytest

from harness.record import Record
from harness.render import Mark, Stat, latex, markdown, to_csv
from analysis.tables import erased_or_hidden, k_ablation, ratio_loss, style_removal
from harness.summary import overview


def rec(method, seed=0, ratio=0.1, state="completed", K=None, eraser="esd", model="world", loss=(1.0, 2.0, 0.1), cell=None, **metrics):
    params = {"method.name": method, "seed": str(seed), "pruning.ratio": str(ratio), "eraser.name": eraser,
              "method.solver": "alternating", "concepts.erase": json.dumps(["stripes", "dots"]),
              "concepts.retain": json.dumps(["glow"]), "model.name": model,
              "finetune.loss.diffusion": str(loss[0]), "finetune.loss.output_kd": str(loss[1]), "finetune.loss.feature_kd": str(loss[2])}
    if K is not None:
        params["method.K"] = str(K)
    return Record(cell or f"{method}{seed}{ratio}{K}{eraser}{loss}", state, params, metrics if state == "completed" else {})


def concept_metrics(stripes, dots, glow=80.0, fid=2.0):
    return {"fid": fid, "clip_score": 90.0, "presence/stripes": stripes, "presence/dots": dots, "presence/glow": glow,
            "csd/stripes": stripes, "csd/dots": dots, "cost/wall_s": 10.0}


def test_seeds_make_one_row_with_an_interval_and_a_clear_best_is_bold():
    records = [rec("distill", s, **concept_metrics(60, 70, fid=f)) for s, f in ((0, 1.0), (1, 2.0), (2, 3.0))]
    records += [rec("two_stage", s, **concept_metrics(10 + s, 20, fid=4.0)) for s in range(3)]
    records += [rec("teacher", **concept_metrics(0, 0, fid=0.5))]  # a reference: never bold
    averaged, *per_concept = style_removal(records)
    assert [t.title for t in [averaged, *per_concept]] == [
        "Style removal, ratio 0.1, stripes+dots erased, averaged", "Style removal, ratio 0.1, stripes+dots erased, stripes",
        "Style removal, ratio 0.1, stripes+dots erased, dots"]
    rows = {r["method"]: r for r in averaged.rows}
    assert list(rows) == ["teacher", "distill only", "two-stage + esd"]
    # no evaluation noise recorded (se/*): the se of a row is the spread over seeds / √k, known to k − 1 = 2 df
    assert rows["distill only"]["fid"] == Stat(2.0, 1.0, 3, pytest.approx(3 ** -0.5), 2) and rows["distill only"]["n"] == "3/3"
    assert rows["two-stage + esd"]["presence_erased"] == Stat(15.5, 0.5, 3, pytest.approx(0.5 / 3 ** 0.5), 2)  # stripes 10..12 and dots 20, averaged
    assert per_concept[0].rows[2]["presence_erased"] == Stat(11.0, 1.0, 3, pytest.approx(3 ** -0.5), 2)
    text = markdown(averaged)
    # the interval printed is t(2) = 4.303 se: 4.303 × 0.577 = 2.48 and 4.303 × 0.289 = 1.24.
    # FID 2 vs 4 (se 0.577 and 0, Welch df 2): 3.5 se apart, which a z-test would call a difference,
    # but the se itself comes from 3 values: t(2) needs 4.3 se. Presence 15.5 vs 65: far beyond.
    assert "| 2 ± 2.48 |" in text and "**2 ± 2.48**" not in text
    assert "**15.5 ± 1.24**" in text
    assert "| 0.5 |" in text and "**0.5**" not in text  # the teacher's FID: better, but a reference
    assert "presence erased ↓" in text and "presence retained ↑" in text


def test_a_missing_or_failed_cell_is_marked_not_dropped():
    records = [rec("distill", 0, **concept_metrics(60, 70)), rec("distill", 1, **concept_metrics(62, 70)),
               rec("distill", 2, state="failed"), rec("bilevel", 0, K=5, state="missing"), rec("bilevel", 0, K=10, **concept_metrics(30, 40))]
    table = overview(records)
    rows = {(r["method"], r["K"]): r for r in table.rows}
    assert rows[("distill only", None)]["n"] == "2/3" and rows[("distill only", None)]["fid"].n == 2
    assert rows[("bilevel (alternating, esd)", 5)]["n"] == "0/1"
    assert Mark("missing") in rows[("bilevel (alternating, esd)", 5)].values()
    assert "*missing*" in markdown(table) and r"\textit{missing}" in latex(table)
    (k,) = k_ablation(records)
    assert [r["K"] for r in k.rows] == [5, 10]


def test_latex_is_booktabs_and_csv_keeps_mean_se_and_sd():
    records = [rec("distill", s, **concept_metrics(60 + s, 70), **{"se/presence/stripes": 2.0, "se/presence/dots": 2.0}) for s in range(2)]
    records += [rec("two_stage", 0, **concept_metrics(10, 20), **{"se/presence/stripes": 2.0, "se/presence/dots": 2.0})]
    table = style_removal(records)[0]
    tex = latex(table)
    assert tex.count(r"\toprule") == 1 and r"\midrule" in tex and r"\bottomrule" in tex and r"$\downarrow$" in tex
    assert r"$\pm$" in tex and "two-stage + esd" in tex and r"\textbf{" in tex
    csv = to_csv([table]).splitlines()
    header = csv[0].split(",")
    for suffix in ("", "_se", "_ci95", "_sd", "_n"):
        assert f"presence_erased{suffix}" in header


def test_published_numbers_sit_beside_real_scale_rows_only():
    real = [rec("distill", 0, model="sd21", **concept_metrics(60, 70)), rec("two_stage", 0, model="sd21", **concept_metrics(10, 20)),
            rec("bilevel", 0, K=10, model="sd21", **concept_metrics(5, 6))]
    table = style_removal(real, published=True)[0]
    labels = [r["method"] for r in table.rows]
    assert "two-stage + esd (paper)" in labels and "bilevel (alternating, esd) (paper)" in labels
    assert "two-stage + UCE (paper)" in labels
    paper_row = table.rows[labels.index("bilevel (alternating, esd) (paper)")]
    assert paper_row["csd_erased"] == 39.04 and paper_row["fid"] == 22.24
    # published rows are references: the best FID among ours is bold, not the paper's 22.24
    assert "**22.24**" not in markdown(table)
    world = [rec("distill", 0, **concept_metrics(60, 70)), rec("two_stage", 0, **concept_metrics(10, 20))]
    assert not any("(paper)" in r["method"] for r in style_removal(world, published=True)[0].rows)


def test_ratio_by_loss():
    records = [rec("distill", 0, ratio=r, loss=loss, fid=f, heldout_mse=0.1)
               for r, loss, f in ((0.1, (1.0, 0.0, 0.0), 5.0), (0.1, (1.0, 2.0, 0.1), 3.0), (0.2, (1.0, 2.0, 0.1), 4.0))]
    (table,) = ratio_loss(records)
    rows = {r["method"]: r for r in table.rows}
    assert set(rows) == {"diffusion only", "diffusion + KD"}
    assert rows["diffusion + KD"]["fid@0.1"] == Stat(3.0, None, 1) and rows["diffusion + KD"]["fid@0.2"] == Stat(4.0, None, 1)
    assert not any("**" in line for line in markdown(table).splitlines() if line.startswith("|"))  # one cell each, no noise recorded: nothing bold
    assert rows["diffusion only"]["n@0.2"] == "0/0" and rows["diffusion only"].get("fid@0.2") is None


def test_cells_of_different_kernel_sets_are_never_averaged():
    """AVX2 and AVX-512 kernels give different numbers for one config: a row holds cells of one
    kernel set, and a table of one kernel set names it in its notes."""
    records = [rec("distill", s, **concept_metrics(60, 70, fid=1.0 + s)) for s in range(2)]
    records[0].kernel_set, records[1].kernel_set = "cpu AVX2 mkl t2", "cpu AVX512 mkl t2"
    table = overview(records)
    labels = sorted(r["method"] for r in table.rows)
    assert labels == ["distill only [cpu AVX2 mkl t2]", "distill only [cpu AVX512 mkl t2]"]
    assert all(r["fid"].n == 1 for r in table.rows)
    assert "2 kernel sets" in markdown(table)
    records[1].kernel_set = "cpu AVX2 mkl t2"
    (row,) = overview(records).rows
    assert row["method"] == "distill only" and row["fid"] == Stat(1.5, 2 ** -0.5, 2, pytest.approx(0.5), 1)
    assert "Kernel set: cpu AVX2 mkl t2." in markdown(overview(records))


def test_evaluation_noise_decides_what_is_bold_and_the_floor_row_is_a_reference():
    """One seed per row: the interval is the cell's own evaluation noise (se/*). FID 2.0 vs 2.5
    (se 0.3 each: 0.5 < 3 × 0.42) is not a difference; 2.0 vs 4.0 is. The teacher's floor/*
    metrics make the noise-floor row, never bold."""
    def cell(method, fid, **kw):
        return rec(method, **kw, **concept_metrics(60, 70, fid=fid), **{"se/fid": 0.3})

    close = [cell("distill", 2.0), cell("two_stage", 2.5)]
    table = style_removal(close)[0]
    assert {r["method"]: r["fid"] for r in table.rows}["distill only"] == Stat(2.0, None, 1, 0.3)
    assert "**2 ± 0.588**" not in markdown(table) and "2 ± 0.588" in markdown(table)
    far = [cell("distill", 2.0), cell("two_stage", 4.0)]
    assert "**2 ± 0.588**" in markdown(style_removal(far)[0])
    teacher = rec("teacher", **concept_metrics(90, 90, fid=1.0), **{"floor/fid": 0.7, "floor/se/fid": 0.05, "floor/presence/stripes": 99.0})
    rows = style_removal([*far, teacher])[0].rows
    labels = [r["method"] for r in rows]
    assert labels[:2] == ["teacher", "real renders (noise floor)"]
    assert rows[1]["fid"] == Stat(0.7, None, 1, 0.05) and rows[1]["presence_erased"].mean == 99.0


def test_erasers_are_ranked_by_presence_and_by_attack_and_a_reversal_is_weighed_against_noise():
    """Three seeds of three erasers: ESD shows the concept most without attack, concept ablation
    least; under the soft attack concept ablation is broken most, beyond noise (spread 1 over
    seeds); the discrete attack keeps the presence order. The never-learned floor is a
    reference row, never ranked; cells that were not probed make no table."""
    def cell(method, seed, presence, soft, discrete, eraser="esd", K=None):
        robust = {f"robust/{k}/{c}": v for k, v in (("pre_asr", presence), ("asr_soft", soft), ("asr_discrete", discrete),
                                                    ("relearn_steps", 4)) for c in ("stripes", "dots")}
        robust |= {f"robust/floor/asr_soft/{c}": 3.0 for c in ("stripes", "dots")}
        return rec(method, seed, eraser=eraser, K=K, **concept_metrics(presence + seed, presence + seed), **robust)

    records = [cell("two_stage", s, 30, 50 + s, 20 + s) for s in range(3)]
    records += [cell("two_stage", s, 5, 80 + s, 10 + s, eraser="concept_ablation") for s in range(3)]
    records += [cell("bilevel", s, 15, 40 + s, 15 + s, K=5) for s in range(3)]
    assert erased_or_hidden([rec("two_stage", s, **concept_metrics(30, 30)) for s in range(3)]) == []
    (table,) = erased_or_hidden(records)
    assert table.title == "Erased or hidden, ratio 0.1, stripes+dots: ranking by presence and by attack"
    rows = {r["method"]: r for r in table.rows}
    ranks = {m: (r["presence_erased#rank"], r["robust/asr_soft_erased#rank"], r["robust/asr_discrete_erased#rank"])
             for m, r in rows.items() if m != "never learned (robustness floor)"}
    assert ranks == {"two-stage + esd": (3, 2, 3), "two-stage + concept_ablation": (1, 3, 1), "bilevel (alternating, esd)": (2, 1, 2)}
    assert rows["never learned (robustness floor)"]["robust/asr_soft_erased"].mean == 3.0
    assert "presence_erased#rank" not in rows["never learned (robustness floor)"] or \
        rows["never learned (robustness floor)"]["presence_erased#rank"] is None
    soft, discrete = [n for n in table.notes if n.startswith("By ASR")]
    assert soft.startswith("By ASR soft: bilevel (alternating, esd) K=5 < two-stage + esd < two-stage + concept_ablation;")
    # presence 5 vs 30 (sd 1 over 3 seeds each: se √(2/3), Welch df 4, interval 2.776 × 0.816 = 2.3): beyond noise; soft 80 vs 50 too
    assert "two-stage + concept_ablation vs two-stage + esd: presence +25.0 ± 2.3 (beyond noise), ASR soft -30.0 ± 2.3 (beyond noise)" in soft
    assert "Kendall τ with the presence order -0.33" in soft  # one pair of three agrees
    assert discrete.endswith("Kendall τ with the presence order +1.00. Same order.")
    assert "ASR soft ↓" in markdown(table) and "rank" in markdown(table)


def test_an_interval_from_few_seeds_uses_students_t_and_evaluation_noise_the_normal():
    """The printed ± is a 95% interval: t(k − 1) where the seeds' spread decides, 1.96 where the
    cells' own evaluation noise (hundreds of images) is wider; a difference's degrees of freedom
    are Welch's."""
    from harness.render import difference, quantile, welch_df

    assert quantile(None) == pytest.approx(1.959964, abs=1e-6) and quantile(2) == pytest.approx(4.302653, abs=1e-6)
    assert welch_df([(1.0, 2), (1.0, 2)]) == pytest.approx(4.0) and welch_df([(1.0, None), (1.0, None)]) is None
    assert welch_df([(1.0, 2), (0.0, None)]) == pytest.approx(2.0)  # an exactly known term adds no uncertainty
    seeds = [rec("distill", s, **concept_metrics(60, 70, fid=f), **{"se/fid": 0.1}) for s, f in enumerate((1.0, 2.0, 3.0))]
    (row,) = overview(seeds).rows
    assert row["fid"].df == 2 and row["fid"].half_width == pytest.approx(4.302653 * 3 ** -0.5, rel=1e-6)
    noisy = [rec("distill", s, **concept_metrics(60, 70, fid=f), **{"se/fid": 3.0}) for s, f in enumerate((1.0, 2.0, 3.0))]
    (row,) = overview(noisy).rows
    assert row["fid"].df is None and row["fid"].se == pytest.approx(3.0 / 3 ** 0.5)  # √(Σ se²/k)/√k: 1.96 × 1.73 > 4.30 × 0.58
    d, se, df = difference(Stat(1.0, None, 1, 0.3), Stat(2.0, 1.0, 3, 0.4, 2))
    assert (d, se) == (1.0, pytest.approx(0.5)) and df == pytest.approx(0.25 ** 2 / (0.4 ** 4 / 2))


def test_the_attack_budget_table_says_what_the_last_doubling_of_the_budget_added():
    """ASR against the attack's iterations, from each probed cell's robustness.json: the soft
    curve still rises by 10 ± 1 points at its last doubling (a lower bound), the discrete one
    rises by 0 (flat); a cell without a probe record is left out, not counted as zero."""
    from analysis.tables import attack_budget

    def probe(soft, discrete):
        curve = lambda values: [{"iteration": i, "asr": v, "loss": 0.0} for i, v in zip((10, 20, 40), values)]
        # the original model shows the concept for 3 of 4 prompts; soft brings back 2 of them, discrete 1 (and one it never showed)
        return {"concepts": {c: {"original_hits": [True, True, True, False],
                                 "soft": {"curve": curve(soft), "hits": [True, True, False, False]},
                                 "discrete": {"curve": curve(discrete), "hits": [True, False, False, True]}} for c in ("stripes", "dots")}}

    robust = {f"robust/asr_soft/{c}": 1.0 for c in ("stripes", "dots")}
    records = [rec("two_stage", s, **concept_metrics(10, 20), **robust) for s in range(3)]
    records.append(rec("two_stage", 3, **concept_metrics(10, 20), **robust))  # probed, but its artifact is missing
    probes = {r.cell: probe((40, 50 + s, 59 + 2 * s), (30, 30, 30)) for s, r in enumerate(records[:3])}
    soft, discrete = attack_budget(records, lambda r: probes.get(r.cell))
    assert soft.title == "Attack budget, soft attack: ASR against its iterations"
    every = soft.rows[-1]
    assert every["method"] == "every probed cell" and every["n"] == "3"
    assert every["asr@40"].mean == pytest.approx(61.0) and every["rise20"].mean == pytest.approx(10.0)
    assert every["rise20"].half_width == pytest.approx(4.302653 * (1.0 / 3 ** 0.5), rel=1e-6)  # rises 9, 10, 11: sd 1, t(2)
    assert "still added 10.0 ± 2.5 points: the curve has not flattened" in " ".join(soft.notes)
    assert "not distinguishable from 0: that doubling adds at most 0.0 points" in " ".join(discrete.notes)
    assert "ASR @40" in markdown(soft)
    assert every["ceiling"].mean == pytest.approx(75.0) and every["reached"].mean == pytest.approx(200 / 3)
    assert discrete.rows[-1]["reached"].mean == pytest.approx(100 / 3)  # a hit where the original shows nothing is not counted
    assert "of ceiling @40" in markdown(soft)
    # ranking: at 20 the cells (50, 51, 52) rank as at 40 (59, 61, 63); at 10 (all 40) there is no ranking to compare
    assert "Kendall τ-b between their ASR at each check and at 40: @10 –, @20 +1.00." in " ".join(soft.notes)
    older = {cell: {"concepts": {c: {k: {"curve": v[k]["curve"]} for k in ("soft", "discrete")} for c, v in p["concepts"].items()}}
             for cell, p in probes.items()}
    assert "ceiling" not in {c.key for c in attack_budget(records, lambda r: older.get(r.cell))[0].columns}  # records from before original_hits
    single = {r.cell: {"concepts": {c: {k: {"curve": [{"iteration": 80, "asr": 50.0}]} for k in ("soft", "discrete")}
                                    for c in ("stripes", "dots")}} for r in records}
    assert attack_budget(records, lambda r: single.get(r.cell)) == []  # one check is no curve


def test_compare_gives_a_difference_with_its_welch_interval_and_the_bold_rule():
    """`python -m analysis.compare`: second − first in a column, the se and Welch df of that
    difference, and 'beyond noise' exactly where the tables would bold the better row."""
    from analysis.compare import CompareError, compare, find_table
    from harness.render import quantile

    records = [rec("distill", s, **concept_metrics(60, 70, fid=f)) for s, f in ((0, 1.0), (1, 2.0), (2, 3.0))]
    records += [rec("two_stage", s, **concept_metrics(10 + s, 20, fid=4.0)) for s in range(3)]  # one eraser erases far more
    records += [rec("two_stage", s, eraser="concept_ablation", **concept_metrics(58 + s, 71, fid=2.0)) for s in range(3)]
    tables = style_removal(records)
    averaged = find_table(tables, "stripes+dots erased, averaged")
    c = compare(averaged, "distill only", "two-stage + esd", "presence erased")
    a, b = (next(r for r in averaged.rows if r["method"] == m)["presence_erased"] for m in ("distill only", "two-stage + esd"))
    assert c.diff == pytest.approx(b.mean - a.mean) and c.se == pytest.approx((a.se ** 2 + b.se ** 2) ** 0.5)
    assert c.half_width == pytest.approx(quantile(c.df) * c.se) and c.beyond_noise
    assert averaged.best()["presence_erased"] == averaged.rows.index(next(r for r in averaged.rows if r["method"] == "two-stage + esd"))
    close = compare(averaged, "distill only", "two-stage + concept_ablation", "presence erased")
    assert not close.beyond_noise and "within noise" in close.line("distill only", "two-stage + concept_ablation")
    with pytest.raises(CompareError, match="no row 'bilevel'.*its rows: .*two-stage \\+ esd"):
        compare(averaged, "distill only", "bilevel", "FID")
    with pytest.raises(CompareError, match="no column 'ASR soft'"):
        compare(averaged, "distill only", "two-stage + esd", "ASR soft")
    with pytest.raises(CompareError, match="3 tables named like 'stripes'"):
        find_table(tables, "stripes")
