"""Analysis on a finished `sweep=smoke` (the real one, shipped world): tables from MLflow alone
that agree with the cells on disk, figures logged to the parent run, the notebooks executed
headless, the MLflow UI rendered in headless Chromium, and what the sweep now records for
them (cost, recovery, the teacher row)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(smoke_sweep):
    out, done = smoke_sweep
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def uri(out: Path) -> str:
    return f"sqlite:///{out / 'mlflow.db'}"


def test_tables_from_mlflow_agree_with_the_cells_on_disk(smoke):
    from analysis.records import load
    from harness.record import from_cells
    from omegaconf import OmegaConf

    from harness.cell import Cell

    done = run_cli(["analysis.tables", "--sweep", "smoke", "--out-dir", str(smoke)])
    assert done.returncode == 0, done.stderr
    (folder,) = (smoke / "analysis").iterdir()
    md, tex, csv = ((folder / f"tables.{ext}").read_text() for ext in ("md", "tex", "csv"))
    assert md.strip() in done.stdout
    assert "**Style removal, ratio 0.3, stripes erased**" in md and "**Pruning ratio × lower-level loss**" in md
    assert "**K ablation, ratio 0.3, stripes**" in md
    for label in ("teacher", "distill only", "two-stage + esd", "two-stage + concept_ablation",
                  "bilevel (alternating, esd)", "bilevel (penalty, esd)"):
        assert f"| {label} |" in md
    assert "CSD ↓" in md and "CP ↑" in md and "1/1" in md and "**" in md
    assert r"\toprule" in tex and r"\bottomrule" in tex and tex.count(r"\begin{tabular}") == md.count("**Style") + 2
    assert {"fid", "fid_sd", "fid_n", "presence_erased"} <= set(csv.splitlines()[0].split(","))
    # the same numbers from MLflow and from disk
    study = load(uri(smoke), "smoke")
    assert len(study.records) == 6 and all(r.state == "completed" for r in study.records)
    cells = [Cell(OmegaConf.load(c / "config.yaml")) for c in sorted((smoke / "cells").iterdir())]
    disk = {r.cell: r for r in from_cells(cells)}
    for r in study.records:
        assert r.label == disk[r.cell].label and r.depends_on == disk[r.cell].depends_on
        for key, value in disk[r.cell].metrics.items():
            assert r.metrics[key] == pytest.approx(value, rel=1e-9), key
    # logged to the sweep's parent run
    from mlflow.tracking import MlflowClient

    logged = [a.path for a in MlflowClient(uri(smoke)).list_artifacts(study.parent_run_id, "tables")]
    assert sorted(logged) == ["tables/tables.csv", "tables/tables.md", "tables/tables.tex"]


def test_what_the_sweep_records_for_analysis(smoke):
    from analysis.records import load

    study = load(uri(smoke), "smoke")
    by_method = {r.method: r for r in study.records}
    teacher, distill = by_method["teacher"], by_method["distill"]
    # cost of every cell, also in MLflow
    for r in study.records:
        assert r.metrics["cost/wall_s"] > 1 and r.metrics["cost/cpu_h"] > 0 and r.metrics["cost/peak_rss_gb"] > 0.2
        assert r.metrics["cost/gpu_h"] == 0
    # the teacher row: unpruned, evaluated, no CSD / CP (nothing to compare with), no student file
    assert teacher.metrics["pruning/macs_pct"] == 100 and "fid" in teacher.metrics
    assert not any(k.startswith(("csd/", "cp/")) for k in teacher.metrics)
    assert not (smoke / "cells" / teacher.cell / "student.safetensors").exists()
    # two-stage names the distill cell it started from
    assert by_method["two_stage"].depends_on == distill.cell
    # recovery at steps 5 and 10, from checkpoints kept for it
    from mlflow.tracking import MlflowClient

    history = MlflowClient(uri(smoke)).get_metric_history(distill.run_id, "recovery/fid")
    assert sorted(m.step for m in history) == [5, 10]
    kept = sorted(p.name for p in (smoke / "cells" / distill.cell / "checkpoints" / "finetune").glob("step_*.pt"))
    assert kept == ["step_00000005.pt", "step_00000010.pt", "step_00000020.pt"]


def test_a_cell_without_a_run_is_marked_missing(smoke, tmp_path):
    from analysis.records import load
    from harness.render import markdown
    from analysis.tables import style_removal

    store = tmp_path / "out"
    shutil.copytree(smoke, store, ignore=shutil.ignore_patterns("cells", "mlartifacts"))
    from mlflow.tracking import MlflowClient

    study = load(uri(store), "smoke")
    victim = next(r for r in study.records if r.label == "two-stage + esd")
    MlflowClient(uri(store)).delete_run(victim.run_id)
    again = load(uri(store), "smoke")
    (marked,) = [r for r in again.records if r.cell == victim.cell]
    assert marked.state == "missing" and marked.label == "two-stage + esd"
    text = markdown(style_removal(again.records)[0])
    assert "| two-stage + esd | – | *missing* |" in text and "| 0/1 |" in text


def test_a_bad_sweep_or_store_fails_in_one_line(smoke, tmp_path):
    unknown = run_cli(["analysis.tables", "--sweep", "nope", "--out-dir", str(smoke)])
    assert unknown.returncode == 2 and unknown.stderr.strip().count("\n") == 0
    assert "'nope'" in unknown.stderr and "smoke" in unknown.stderr
    nothing = run_cli(["analysis.figures", "--sweep", "smoke", "--out-dir", str(tmp_path)])
    assert nothing.returncode == 2 and "no MLflow store" in nothing.stderr and nothing.stderr.strip().count("\n") == 0


def test_figures_are_drawn_from_mlflow_and_logged(smoke):
    done = run_cli(["analysis.figures", "--sweep", "smoke", "--out-dir", str(smoke)])
    assert done.returncode == 0, done.stderr
    (folder,) = (smoke / "analysis").iterdir()
    for name in ("quality_vs_suppression", "training_curves", "samples_stripes", "recovery"):
        for ext in ("png", "pdf"):
            assert (folder / f"{name}.{ext}").stat().st_size > 5_000, name
    from PIL import Image

    with Image.open(folder / "samples_stripes.png") as grid:  # 5 method rows, 6 prompt columns
        assert grid.height > 600 and grid.width > 900
    from analysis.records import load
    from mlflow.tracking import MlflowClient

    study = load(uri(smoke), "smoke")
    logged = {a.path for a in MlflowClient(uri(smoke)).list_artifacts(study.parent_run_id, "figures")}
    assert {"figures/recovery.png", "figures/samples_stripes.pdf", "figures/quality_vs_suppression.png"} <= logged


def test_pareto_front():
    from analysis.figures import pareto_front

    points = [(1.0, 9.0), (2.0, 5.0), (3.0, 6.0), (4.0, 1.0), (5.0, 1.0), (0.5, 10.0)]
    assert pareto_front(points) == [(0.5, 10.0), (1.0, 9.0), (2.0, 5.0), (4.0, 1.0)]


def test_notebooks_execute_headless(smoke):
    done = run_cli(["analysis.notebooks", "--sweep", "smoke", "--out-dir", str(smoke)], timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = (smoke / "analysis").iterdir()
    figures = json.loads((folder / "notebooks" / "figures.ipynb").read_text())
    tables = json.loads((folder / "notebooks" / "tables.ipynb").read_text())
    outputs = lambda nb: [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]  # noqa: E731
    assert sum("image/png" in o.get("data", {}) for o in outputs(figures)) >= 4  # quality, curves, samples, recovery
    assert any("Style removal" in "".join(o.get("data", {}).get("text/markdown", "")) for o in outputs(tables))
    assert not any(o.get("output_type") == "error" for o in outputs(figures) + outputs(tables))
    # the sweep came in as a parameter, after the notebook's own parameters cell
    injected = [c for c in tables["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "SWEEP = 'smoke-" in "".join(injected[0]["source"])


def test_a_failing_notebook_cell_is_reported(tmp_path):
    import nbformat

    from analysis.notebooks import execute

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("SWEEP = 'x'", metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell("raise ValueError(f'no sweep {SWEEP}')")])
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(RuntimeError, match=r"broken.ipynb: cell 2: .*ValueError: no sweep smoke"):
        execute(path, {"SWEEP": "smoke"}, tmp_path / "run")
    assert (tmp_path / "run" / "broken.ipynb").exists()


def test_mlflow_ui_shows_the_sweep_in_chromium(smoke):
    from analysis.records import load
    from analysis.ui import browse, chromium, pages, serve, visible_text

    chromium()  # installed by `make test` and .ci/run; absent, this fails naming the package
    shots = Path(os.environ.get("HARNESS_TEST_ARTIFACTS", REPO / "test-artifacts"))
    study = load(uri(smoke), "smoke")
    children = sorted(f"{r.method}-{r.cell}" for r in study.records)
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("mlflow-ui-*"))
    with serve(uri(smoke)) as base:
        private = set(temp.glob("mlflow-ui-*")) - before
        assert all(p.is_dir() and p.stat().st_mode & 0o077 == 0 for p in private), private  # its log: private
        urls = pages(uri(smoke), "smoke", base=base)
        assert base.startswith("http://127.0.0.1:")
        runs = visible_text(browse(urls["runs"], shots / "mlflow_runs.png"))
        sweep = visible_text(browse(urls["sweep"], shots / "mlflow_sweep.png"))
        cell = visible_text(browse(urls["cell"]))
    assert set(temp.glob("mlflow-ui-*")) == before  # nothing left behind
    assert study.name in runs and "7 matching runs" in runs  # the parent, its 6 children folded under it
    assert study.name in sweep and all(name in sweep for name in children)  # the parent's child runs
    assert "wall_seconds" in sweep and "failed" in sweep
    first = min((r for r in study.records), key=lambda r: r.cell)
    assert f"{first.method}-{first.cell}" in cell
    assert "fid" in cell and repr(first.metrics["fid"])[:8] in cell  # a metric and its value
    assert (shots / "mlflow_runs.png").stat().st_size > 20_000


def test_a_method_keeps_its_colour_in_every_figure():
    """The colours come from every cell of the study, not from the cells a figure shows: a figure
    without the distilled model's points (attack vs quality: it erases nothing) still draws
    each eraser in the colour of the quality-vs-suppression figure."""
    from types import SimpleNamespace

    from matplotlib.colors import to_hex

    from analysis.figures import attack_vs_quality, quality_vs_suppression
    from tests.test_table import rec

    def metrics(csd, asr):
        return {"fid": 2.0, "csd/stripes": csd, "csd/dots": csd, "robust/pre_asr/stripes": asr / 2, "robust/pre_asr/dots": asr / 2,
                "robust/asr_soft/stripes": asr, "robust/asr_soft/dots": asr}

    records = [rec("distill", **{"fid": 1.0, "csd/stripes": 100.0, "csd/dots": 100.0}), rec("two_stage", eraser="concept_ablation", **metrics(40.0, 60.0)),
               rec("two_stage", **metrics(60.0, 70.0))]
    study = SimpleNamespace(records=records, completed=records, name="colours")

    def colour_of(figure):
        (ax,) = figure.axes
        return {t.get_text(): to_hex(h.get_facecolor()[0]) for t, h in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles)
                if hasattr(h, "get_facecolor")}

    quality, attack = colour_of(quality_vs_suppression(study)), colour_of(attack_vs_quality(study))
    assert "distill only" in quality and "distill only" not in attack
    erasers = {"two-stage + concept_ablation", "two-stage + esd"}
    assert erasers <= attack.keys() and {k: quality[k] for k in erasers} == {k: attack[k] for k in erasers}
