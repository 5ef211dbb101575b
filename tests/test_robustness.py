"""Robustness probes (harness/robustness): the adversarial prefix's plumbing, the discrete
attack's prompts, and the probes run on a cell in evaluation or added to a finished one."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import compose, fails_in_one_line


@pytest.fixture(scope="module")
def tiny_parts():
    from harness.models.tiny import build_tiny
    from harness.models.tiny_weights import tiny_config

    return build_tiny(tiny_config())


PROMPTS = ["a small red circle in the style of stripes", "a large blue square in the style of dots"]


def test_a_prefix_of_token_embeddings_encodes_exactly_as_those_tokens(tiny_parts):
    """The hook replaces the embedding rows at the prefix slots: given the embeddings of real
    tokens, the encoder's output is the tokens' own, bit for bit."""
    from harness.robustness.prompts import encode, prefixed_ids, token_embeddings, word_ids

    tok = tiny_parts.tokenizer
    words = word_ids(tok)
    tokens = words[torch.tensor([[3, 7, 1, 0], [5, 5, 2, 9]])]
    with torch.no_grad():
        as_tokens = encode(tiny_parts, prefixed_ids(tok, PROMPTS, 4, tokens))
        as_rows = encode(tiny_parts, prefixed_ids(tok, PROMPTS, 4), token_embeddings(tiny_parts)[tokens])
        plain = encode(tiny_parts, prefixed_ids(tok, PROMPTS, 4))
    assert torch.equal(as_tokens, as_rows)
    assert not torch.equal(as_tokens, plain)  # the slots matter


def test_a_prefix_that_does_not_fit_the_text_encoder_fails_in_one_line(tiny_parts, tmp_path, capsys):
    from harness.errors import ConfigError
    from harness.robustness.prompts import prefixed_ids

    with pytest.raises(ConfigError, match="eval.robustness.tokens"):
        prefixed_ids(tiny_parts.tokenizer, PROMPTS, 6)  # 11 tokens + 6 > 16
    fails_in_one_line(["method=two_stage", "eval.robustness.enabled=true", "eval.robustness.tokens=6"], tmp_path, capsys,
                      "eval.robustness.tokens=6", "at most 5")
    fails_in_one_line(["method=two_stage", "eval.robustness.enabled=true", "eval.backbone=none"], tmp_path, capsys,
                      "eval.robustness.enabled=True", "eval.backbone=none")
    fails_in_one_line(["method=two_stage", "eval.robustness.objective=nope"], tmp_path, capsys, "eval.robustness.objective='nope'", "p4d")


def test_a_tuning_study_may_optimise_a_probe_when_the_probes_are_on(tmp_path, capsys):
    from harness.tune.spec import parse

    study = ["sweep=tune_two_stage_esd", "~tune.objectives", "+tune.objectives={fid:minimize,robust/asr_soft/erased:minimize}"]
    spec = parse(compose([*study, "eval.robustness.enabled=true", "eval.backbone=world"], tmp_path))
    assert [m for m, _ in spec.objectives] == ["fid", "robust/asr_soft/erased"]
    fails_in_one_line(["-m", *study], tmp_path, capsys, "tune.objectives.robust/asr_soft/erased", "a metric this sweep's cells report")


def test_the_simplex_projection_is_the_euclidean_one():
    from harness.robustness.attack import project_to_simplex

    cases = {(0.5, 0.5, 0.5): (1 / 3, 1 / 3, 1 / 3), (2.0, 0.0, 0.0): (1.0, 0.0, 0.0), (0.6, 0.6, -1.0): (0.5, 0.5, 0.0),
             (0.2, 0.3, 0.5): (0.2, 0.3, 0.5)}
    for point, want in cases.items():
        got = project_to_simplex(torch.tensor(point, dtype=torch.float64))
        assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-12), (point, got)
    rows = project_to_simplex(torch.randn(64, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3)
    assert torch.all(rows >= 0) and torch.allclose(rows.sum(-1), torch.ones(64, dtype=torch.float64))
    # no point of the simplex is closer: a random feasible point never beats the projection
    point = torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    best = (project_to_simplex(point) - point).norm()
    others = torch.distributions.Dirichlet(torch.ones(30, dtype=torch.float64)).sample((500,))
    assert torch.all((others - point).norm(dim=-1) >= best)


def test_the_discrete_attack_returns_prompts_a_user_can_type(tiny_parts):
    """Its prefixes are vocabulary words (no special tokens), and the typed prompt tokenises
    back to the ids the attack scored; the attack is a function of its seed."""
    from harness.robustness.attack import AttackConfig, attack
    from harness.robustness.prompts import decode_prefix, prefixed_ids, special_ids

    parts, tok = tiny_parts, tiny_parts.tokenizer
    x0 = torch.randn(len(PROMPTS), 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cfg = AttackConfig(kind="discrete", tokens=3, iterations=(2, 4), seed=5)
    runs = [list(attack(parts, parts.unet, parts.unet, PROMPTS, x0, cfg)) for _ in range(2)]
    assert [p.iteration for p in runs[0]] == [2, 4]
    assert all(torch.equal(a.tokens, b.tokens) and a.loss == b.loss for a, b in zip(*runs))
    tokens = runs[0][-1].tokens
    assert not set(tokens.flatten().tolist()) & special_ids(tok)
    for b, prompt in enumerate(PROMPTS):
        typed = decode_prefix(tok, tokens[b], prompt)
        assert typed.endswith(prompt) and len(typed.split()) == len(prompt.split()) + 3
        retyped = tok(typed, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids[0]
        assert torch.equal(retyped, prefixed_ids(tok, [prompt], 3, tokens[b : b + 1])[0])


def test_the_soft_attack_moves_the_prefix_and_never_the_models(tiny_parts):
    from harness.robustness.attack import AttackConfig, attack

    parts = tiny_parts
    before = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    text_before = {k: v.clone() for k, v in parts.text_encoder.state_dict().items()}
    x0 = torch.randn(len(PROMPTS), 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for objective in ("unlearndiff", "p4d"):
        first, last = list(attack(parts, parts.unet, parts.unet, PROMPTS, x0,
                                  AttackConfig(kind="soft", objective=objective, tokens=2, iterations=(1, 5), seed=1)))
        assert first.embeddings.shape == (2, 2, parts.text_encoder.config.hidden_size)
        assert not torch.equal(first.embeddings, last.embeddings)
    assert all(torch.equal(v, before[k]) for k, v in parts.unet.state_dict().items())
    assert all(torch.equal(v, text_before[k]) for k, v in parts.text_encoder.state_dict().items())
    assert all(p.requires_grad for p in parts.unet.parameters())  # restored as they were


ROBUST = ["eval.robustness.enabled=true", "eval.robustness.prompts=4", "eval.robustness.iterations=[2,3]",
          "eval.robustness.relearn_steps=2", "eval.robustness.relearn_every=1", "eval.robustness.relearn_images=2"]


def test_probes_are_added_to_a_finished_cell_without_training_and_kept_until_the_budget_changes(tmp_path, capsys):
    """A two-stage cell finished without probes; the same cell asked again with probes on: same
    id, the probes run on its saved student (no training), its results and MLflow run gain
    them; asked again, nothing runs; at another budget, they run again (also from
    `python -m harness.robustness`). A cell that trains with probes on has them from its own
    evaluation."""
    from types import SimpleNamespace

    import mlflow

    from analysis.figures import attack_vs_quality
    from harness.cell import Cell
    from harness.record import from_cells
    from harness.render import markdown
    from harness.runner import run_cell
    from harness.summary import overview

    base = ["method=two_stage", "eval.backbone=world", "eval.concept_prompts=4"]
    cfg = compose(base, tmp_path)
    plain = run_cell(cfg)
    assert not any(k.startswith("robust/") for k in plain["metrics"]) and "robustness" not in plain
    unprobed = from_cells([Cell(cfg)])
    assert attack_vs_quality(SimpleNamespace(records=unprobed, completed=unprobed, name="plain")) is None
    cell = Cell(cfg)
    probed_cfg = compose([*base, *ROBUST], tmp_path)
    assert Cell(probed_cfg).id == cell.id
    lines = len(cell.metric_lines())
    probed = run_cell(probed_cfg)
    robust = {k: v for k, v in probed["metrics"].items() if k.startswith("robust/")}
    assert {"robust/pre_asr/stripes", "robust/asr_soft/stripes", "robust/asr_discrete/stripes", "robust/relearn_steps/stripes",
            "robust/neighbour_retention"} <= robust.keys()
    assert all(0 <= robust[f"robust/{k}/stripes"] <= 100 for k in ("pre_asr", "asr_soft", "asr_discrete"))
    assert robust["robust/asr_soft/stripes"] >= robust["robust/pre_asr/stripes"]  # cumulative: never below no attack
    assert {k: v for k, v in probed["metrics"].items() if not k.startswith(("robust/", "se/robust/"))} == plain["metrics"]
    new_lines = [json.loads(x) for x in cell.metric_lines()[lines:]]
    assert [x["stage"] for x in new_lines] == ["robustness"]  # no training stage logged again
    from PIL import Image

    with Image.open(cell.path("robustness.png")) as grid:  # plain, soft, discrete: a row each, 4 prompts of 16 px at 4x
        assert grid.size == (4 * 64, 3 * 64)
    record = json.loads(cell.path("robustness.json").read_text())
    assert len(record["concepts"]["stripes"]["discrete"]["found_prompts"]) == 4
    assert record["budget"] == probed["robustness"]["budget"] and record["budget"]["iterations"] == [2, 3]

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = [r for r in mlflow.search_runs(experiment_names=["harness"], output_format="list")
              if r.data.tags.get("harness.cell_id") == cell.id]
    assert run.data.metrics["robust/asr_soft/stripes"] == pytest.approx(robust["robust/asr_soft/stripes"])
    # the sample grid (from MLflow alone): the cell's row, then a row per attack, the discrete one's typed words under each image
    from dataclasses import replace

    from analysis.figures import sample_grids
    from analysis.records import client_for

    ((name, grid_figure),) = sample_grids(SimpleNamespace(completed=[replace(from_cells([cell])[0], run_id=run.info.run_id)]),
                                          client_for(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    labels = [ax.get_ylabel() for ax in grid_figure.axes if ax.get_ylabel()]
    assert name == "samples_stripes" and len(grid_figure.axes) == 3 * 4, (name, len(grid_figure.axes))
    assert "soft prefix attack" in labels[1] and "discrete attack" in labels[2], labels
    typed = [ax.get_xlabel() for ax in grid_figure.axes[8:]]
    assert [len(words.split()) for words in typed] == [4] * 4, typed
    assert [" ".join(p.split()[:4]) for p in record["concepts"]["stripes"]["discrete"]["found_prompts"]] == typed

    table = markdown(overview(from_cells([cell, Cell(probed_cfg)])))
    assert all(c in table for c in ("Pre-ASR", "ASR soft", "ASR discrete", "relearn steps", "neighbours kept %")), table
    records = from_cells([cell])
    figure = attack_vs_quality(SimpleNamespace(records=records, completed=records, name="probed"))
    (ax,) = figure.axes
    assert [c.get_offsets().tolist() for c in ax.collections] == [[[probed["metrics"]["fid"], robust["robust/pre_asr/stripes"]]],
                                                                 [[probed["metrics"]["fid"], robust["robust/asr_soft/stripes"]]]]

    again = run_cell(probed_cfg)
    assert again == probed and len(cell.metric_lines()) == lines + 1
    other = run_cell(compose([*base, *ROBUST, "eval.robustness.iterations=[2]", "eval.robustness.neighbours=false"], tmp_path))
    assert other["robustness"]["budget"]["iterations"] == [2] and len(cell.metric_lines()) == lines + 2
    # what the earlier budget measured and this one does not (the neighbours) is gone from the
    # results and, logged as NaN (MLflow cannot delete a metric), from the tables' records
    from analysis.records import load

    assert "robust/neighbour_retention" not in other["metrics"]
    (from_mlflow,) = [r for r in load(f"sqlite:///{tmp_path / 'mlflow.db'}", filter_string=" ").records if r.cell == cell.id]
    assert "robust/neighbour_retention" not in from_mlflow.metrics
    assert from_mlflow.metrics["robust/asr_soft/stripes"] == pytest.approx(other["metrics"]["robust/asr_soft/stripes"])

    fresh = run_cell(compose([*base, *ROBUST, "seed=1"], tmp_path))
    assert "robust/asr_discrete/stripes" in fresh["metrics"] and fresh["robustness"]["budget"]["iterations"] == [2, 3]
    assert json.loads(Cell(compose([*base, *ROBUST, "seed=1"], tmp_path)).path("robustness.json").read_text())["budget"] == fresh["robustness"]["budget"]

    from harness.robustness.__main__ import main

    assert main(["--out-dir", str(tmp_path), cell.id, "eval.robustness.prompts=2", "eval.robustness.iterations=[1]",
                 "eval.robustness.relearn_steps=1"]) == 0
    assert f"{cell.id} two_stage: Pre-ASR" in capsys.readouterr().out
    assert cell.results()["robustness"]["budget"]["prompts"] == 2
    for bad, wanted in ((["seed=3"], "eval.robustness.<key>=<value>"), (["nope"], "no finished cell of that id"),
                        ([Cell(compose(["method=distill", "eval.backbone=world", "eval.concept_prompts=4"], tmp_path)).id], "erases nothing")):
        with pytest.raises(SystemExit) as exit_info:
            main(["--out-dir", str(tmp_path), *bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and wanted in err[0], err


def test_a_cell_made_in_the_reproducible_mode_is_probed_in_it(tmp_path, monkeypatch):
    """`python -m harness.robustness` on a cell that ran pinned restarts itself pinned (the CPU
    kernels are chosen at torch's first use), with the same arguments; on any other cell it
    does not restart."""
    import sys

    from omegaconf import OmegaConf

    from harness import numerics
    from harness.cell import Cell
    from harness.robustness.__main__ import main

    restarts = []

    class Restarted(Exception):
        pass

    def reexec_pinned(argv, module="harness"):
        restarts.append((argv, module))
        raise Restarted

    monkeypatch.setattr(numerics, "reexec_pinned", reexec_pinned)
    for key in numerics.pin_environment():
        monkeypatch.delenv(key, raising=False)
    ids = {}
    for mode in ("true", "false"):  # finished as far as the probes' command can tell: its config and marker
        # the mode is not part of a cell's id (its kernel set is recorded beside it): two seeds
        cell = Cell(compose(["method=two_stage", f"runtime.reproducible={mode}", f"seed={int(mode == 'true')}"], tmp_path))
        cell.dir.mkdir(parents=True)
        cell.path("config.yaml").write_text(OmegaConf.to_yaml(cell.cfg, resolve=True))
        cell.path("COMPLETED").write_text("")
        ids[mode] = cell.id
    argv = ["--out-dir", str(tmp_path), ids["true"], "eval.robustness.prompts=2"]
    monkeypatch.setattr(sys, "argv", ["harness.robustness", *argv])
    with pytest.raises(Restarted):
        main()
    assert restarts == [(argv, "harness.robustness")]
    monkeypatch.setattr(sys, "argv", ["harness.robustness", "--out-dir", str(tmp_path), ids["false"], "eval.robustness.prompts=2"])
    monkeypatch.setattr("harness.runner.add_robustness", lambda cfg, cell: (_ for _ in ()).throw(Restarted("probed")))
    with pytest.raises(Restarted, match="probed"):  # straight to the probes, no restart
        main()
    assert len(restarts) == 1


def test_on_the_shipped_teacher_the_probes_find_the_concept_it_draws(tmp_path):
    """No erasure (the world's teacher itself as the probed model): the concept prompts' images
    show the concept (Pre-ASR near the teacher's presence, ~99% at DDIM 20), the attacks keep
    them, relearning has nothing to do, and the neighbours are all kept (their reference is the
    same model)."""
    from harness import robustness
    from harness.context import build_context
    from harness.evaluation import metric_backbones

    cfg = compose(["method=two_stage", "eval.backbone=world", "eval.sample_steps=20", *ROBUST, "eval.robustness.prompts=8"], tmp_path)
    (tmp_path / "cell").mkdir()
    ctx = build_context(cfg, tmp_path / "cell", lambda dep: None)
    metrics, info = robustness.run(ctx, ctx.teacher, metric_backbones(cfg.eval, ctx.device), None, None)
    assert metrics["robust/pre_asr/stripes"] >= 75, metrics
    assert metrics["robust/asr_soft/stripes"] >= metrics["robust/pre_asr/stripes"]
    assert metrics["robust/relearn_steps/stripes"] == 0 and metrics["robust/relearned/stripes"] == 1
    assert metrics["robust/neighbour_retention"] == 100.0
    assert info["robustness"]["budget"]["prompts"] == 8


@pytest.fixture(scope="module")
def tiny_floor(tmp_path_factory):
    """A floor teacher without stripes at the recipe's smoke scale, beside the shipped towers
    (its values do not matter here: the plumbing does)."""
    import shutil

    from harness.world import WEIGHTS
    from harness.world.build import main as build

    out = tmp_path_factory.mktemp("floor")
    for name in ("world_clip.safetensors", "style_descriptor.safetensors"):
        shutil.copy(WEIGHTS / name, out / name)
    assert build(["--scale", "tiny", "--out", str(out), "--only", "teacher", "--without", "stripes"]) == 0
    return out


def test_the_floor_is_probed_once_per_out_dir_and_shown_as_a_reference_row(tiny_floor, tmp_path, capsys):
    """eval.robustness.floor: the same probes on a model that never learned the concept, under
    robust/floor/; a second cell of the same seed reads the first one's measurement back; the
    tables show it as a reference row. A floor that is missing, or asked at real scale, fails
    in one line before anything runs."""
    from omegaconf import OmegaConf

    from harness.cell import Cell
    from harness.errors import ConfigError
    from harness.record import from_cells
    from harness.render import markdown
    from harness.robustness import floor
    from harness.runner import run_cell
    from harness.summary import NEVER_LEARNED_LABEL, overview

    probes = ["eval.backbone=world", "eval.concept_prompts=4", *ROBUST, "eval.robustness.neighbours=false",
              "eval.robustness.floor=true", f"eval.robustness.floor_weights={tiny_floor}"]
    first = run_cell(compose(["method=two_stage", *probes], tmp_path))
    values = {k: v for k, v in first["metrics"].items() if k.startswith("robust/floor/")}
    assert {f"robust/floor/{k}/stripes" for k in ("pre_asr", "asr_soft", "asr_discrete", "relearn_steps")} <= values.keys()
    assert first["robustness"]["budget"]["floor"] is True
    cells = [Cell(compose(["method=two_stage", *probes], tmp_path))]
    entry = json.loads(cells[0].path("robustness.json").read_text())["concepts"]["stripes"]["floor"]
    assert entry["measured_in"] == cells[0].id and entry["weights"].endswith("teacher_without_stripes.safetensors")
    second = run_cell(compose(["method=two_stage", "eraser=concept_ablation", *probes], tmp_path))
    cells.append(Cell(compose(["method=two_stage", "eraser=concept_ablation", *probes], tmp_path)))
    assert {k: v for k, v in second["metrics"].items() if k.startswith("robust/floor/")} == values
    assert json.loads(cells[1].path("robustness.json").read_text())["concepts"]["stripes"]["floor"]["measured_in"] == cells[0].id

    table = overview(from_cells(cells))
    (row,) = [r for r in table.rows if r["method"] == NEVER_LEARNED_LABEL]
    assert row["robust/asr_soft_erased"].mean == pytest.approx(values["robust/floor/asr_soft/stripes"])
    assert NEVER_LEARNED_LABEL in markdown(table)

    fails_in_one_line(["method=two_stage", *probes, f"eval.robustness.floor_weights={tmp_path / 'nowhere'}"], tmp_path, capsys,
                      "teacher_without_stripes.safetensors", "--without stripes")
    real = OmegaConf.create({"data": {"domain": "artists", "name": "coco"}, "concepts": {"erase": ["van_gogh"]},
                             "eval": {"robustness": {"floor": True}}})
    with pytest.raises(ConfigError, match="Concept World only"):
        floor.check(real)


def test_a_weak_eraser_is_broken_by_the_attack_more_often_than_a_strong_one(tmp_path):
    """ESD for 3 steps against ESD for 60, from the same distilled student: the weak one's
    concept comes back under attack (and relearns sooner) more often than the strong one's:
    beyond 2.58 standard errors of the difference for the soft attack, 1.96 for the discrete one
    (binomial, 16 prompts each). Measured: ASR soft 56.2% against 0%, discrete 43.8% against
    6.2% (each margin survives one prompt's verdict flipping), relearning 2 steps against none
    within 10."""
    import math

    from harness.runner import run_cell

    common = ["method=two_stage", "pruning.ratio=0.05", "eval.backbone=world", "eval.sample_steps=10", "eval.concept_prompts=16",
              "eval.robustness.enabled=true", "eval.robustness.prompts=16", "eval.robustness.iterations=[10,20]",
              "eval.robustness.relearn_steps=10", "eval.robustness.relearn_every=2", "eval.robustness.neighbours=false",
              "eraser.batch_size=4", "eraser.sampler_steps=10"]
    weak, strong = (run_cell(compose([*common, f"eraser.steps={steps}"], tmp_path))["metrics"] for steps in (3, 60))
    assert weak["presence/stripes"] > strong["presence/stripes"]  # it is weaker by the plain measure too
    for kind, z in (("soft", 2.58), ("discrete", 1.96)):
        key = f"robust/asr_{kind}/stripes"
        se = math.hypot(weak[f"se/{key}"], strong[f"se/{key}"])
        assert weak[key] - strong[key] > z * se, (kind, weak[key], strong[key], se)
    assert weak["robust/relearn_steps/stripes"] < strong["robust/relearn_steps/stripes"]


def test_a_model_that_never_learned_the_concept_stays_at_the_floor(tmp_path):
    """The shipped floor teacher (the recipe without stripes' scenes) against the shipped
    teacher, on the same 16 stripes prompts and seeds: the teacher draws stripes; the floor
    does not, the attacks do not conjure them (40 iterations), and 20 relearning steps do not
    bring it near the teacher's presence. Measured here: teacher 87.5% plain and under both
    attacks; floor 0% plain, 0% under both attacks, 18.8% after 20 relearning steps against a
    target of 77.5%. (32 prompts, 40 iterations, 50 steps: teacher 93.8%; floor 0% plain, 3.1%
    under either attack, relearning not back.)"""
    from harness import robustness
    from harness.context import build_context
    from harness.evaluation import metric_backbones

    cfg = compose(["method=two_stage", "eval.backbone=world", "eval.sample_steps=20", "eval.robustness.enabled=true",
                   "eval.robustness.prompts=16", "eval.robustness.iterations=[10,40]", "eval.robustness.relearn_steps=20",
                   "eval.robustness.relearn_every=5", "eval.robustness.neighbours=false", "eval.robustness.floor=true"], tmp_path)
    (tmp_path / "cell").mkdir()
    ctx = build_context(cfg, tmp_path / "cell", lambda dep: None)
    metrics, _ = robustness.run(ctx, ctx.teacher, metric_backbones(cfg.eval, ctx.device), None, None)
    values = {k: v for k, v in metrics.items() if k.endswith("/stripes") and not k.startswith("se/")}
    assert metrics["robust/pre_asr/stripes"] >= 75, values
    assert metrics["robust/floor/pre_asr/stripes"] <= 6.25, values  # at most 1 of 16
    assert max(metrics["robust/floor/asr_soft/stripes"], metrics["robust/floor/asr_discrete/stripes"]) <= 12.5, values
    assert metrics["robust/floor/relearned/stripes"] == 0 and metrics["robust/floor/relearn_steps/stripes"] == 20, values
