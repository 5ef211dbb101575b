"""Every config composes; every world/tiny combination validates."""

from __future__ import annotations

import pytest

from harness.compose import CONF, group_options
from harness.errors import MissingInputError
from harness.validate import validate
from harness.world import WEIGHTS
from harness.app import plan_sweep
from tests.conftest import REPO, SMALL, SMALL_WORLD, compose, real_scale

OPTIONS = [(group, choice) for group, choices in group_options().items() for choice in choices]


@pytest.mark.parametrize("group,choice", OPTIONS, ids=[f"{g}={c}" for g, c in OPTIONS])
def test_every_config_composes(group, choice):
    cfg = compose([f"{group}={choice}"])
    assert cfg is not None
    if cfg.model.name == "sd21":  # model=sd21, or a sweep at the paper's scale
        with pytest.raises(MissingInputError, match="model.path="):
            validate(cfg)
    elif group == "data" and choice == "coco":
        with pytest.raises(MissingInputError, match="data.root="):
            validate(cfg)
    elif cfg.eval.backbone == "world" and not (WEIGHTS / "world_clip.safetensors").is_file():
        with pytest.raises(MissingInputError, match="eval.weights="):
            validate(cfg)  # image metrics need the world's backbones (python -m harness.world.build)
    elif group == "concepts" and choice == "artists":
        with pytest.raises(ValueError, match="concepts.erase='van_gogh'"):
            validate(cfg)  # artists belong to the art domain, not the world
    else:
        validate(cfg)


@pytest.mark.parametrize("group,choice", OPTIONS, ids=[f"{g}={c}" for g, c in OPTIONS])
def test_every_key_of_every_config_is_declared(group, choice):
    """Every leaf of every composed config has a declaration (harness/schema.py, the method's
    `keys`, the erasers' `keys()`) that its value satisfies, missing weights or not: a key
    added to a YAML file without one fails here."""
    from harness import schema

    schema.check(compose([f"{group}={choice}"]))


def test_an_undeclared_key_fails_naming_it():
    from harness import schema
    from harness.errors import ConfigError

    for override, name in (("+finetune.new_knob=1", "finetune.new_knob"), ("+method.KK=5", "method.KK"),
                           ("+model.unet.extra=1", "model.unet.extra"), ("+eval.real.other=x", "eval.real.other")):
        with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
            schema.check(compose([override]))
    schema.check(compose(["+method.K=7"]))  # bilevel's key on a distill cell: accepted, ignored


def test_config_groups_mirror_the_code():
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    assert {"model", "data", "concepts", "pruning", "method", "eraser", "eval", "launcher"} <= groups


@pytest.mark.parametrize("sweep", group_options()["sweep"])
def test_every_sweep_expands_to_valid_distinct_cells(sweep, tiny_world_weights, capsys):
    if real_scale([f"sweep={sweep}"]):  # without SD 2.1 here: one line naming what is missing
        with pytest.raises(SystemExit) as exit_:
            plan_sweep([f"sweep={sweep}"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(lines) == 1 and "model.path=" in lines[0], lines
        return
    cells = plan_sweep([f"sweep={sweep}", *SMALL_WORLD, *SMALL, f"eval.weights={tiny_world_weights}"])
    ids = [c.id for c, _ in cells]
    if sweep.startswith("tune_"):  # one base cell: the trials come from the study (tests/test_tune.py)
        assert len(ids) == 1 and cells[0][0].cfg.tune is not None
        return
    assert len(ids) == len(set(ids)) > 1
    methods = {c.cfg.method.name for c, _ in cells}
    assert "distill" in methods and cells[0][0].cfg.method.name in ("teacher", "distill")  # references go first
    if sweep in ("smoke", "paper_table"):
        assert methods == {"teacher", "distill", "two_stage", "bilevel"}


def test_paper_table_has_k_only_for_bilevel():
    cells = [c for c, _ in plan_sweep(["sweep=paper_table"])]
    by_method = {}
    for c in cells:
        by_method.setdefault(c.cfg.method.name, []).append(c)
    assert len({c.cfg.method.K for c in by_method["bilevel"]}) >= 2
    # distill depends on neither K nor concept set: one cell per pruning ratio
    ratios = {c.cfg.pruning.ratio for c in cells if c.cfg.method.name != "teacher"}  # the teacher is not pruned
    assert len(by_method["distill"]) == len(ratios) and len(by_method["teacher"]) == 1


def test_command_line_values_apply_to_every_grid_and_foreign_keys_change_nothing():
    def key(cell):
        return cell.cfg.method.name, cell.cfg.method.get("solver"), cell.cfg.eraser.name

    plain = {key(c): c.id for c, _ in plan_sweep(["sweep=smoke"])}
    forced = plan_sweep(["sweep=smoke", "++method.K=3"])
    assert len(forced) == len(plain)
    for cell, _ in forced:
        assert cell.cfg.method.K == 3
        assert (cell.id == plain[key(cell)]) == (cell.cfg.method.name != "bilevel"), key(cell)


def authors_overrides() -> dict[str, str]:
    """key=value pairs of the last column of README's "Where this differs from the authors'
    code": the overrides that restore the authors' settings."""
    import re

    section = (REPO / "README.md").read_text().split("## Where this differs from the authors' code")[1].split("\n## ")[0]
    pairs = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith(("| what", "|---")):
            pairs.update(re.findall(r"([a-z_]+(?:\.[a-z_]+)+)=([^\s`|]+)", line.rstrip(" |").rsplit("|", 1)[-1]))
    return pairs


def test_the_sd21_preset_sets_every_setting_of_the_authors():
    """sweeps/paper_sd21.yaml carries each override of the README's deviations table: the
    shared keys at its top level, the bilevel ones in its alternating-solver grid (the
    authors' code), the eraser's in its ESD block."""
    from omegaconf import OmegaConf

    from harness.compose import compose_config

    wanted = authors_overrides()
    assert len(wanted) >= 15 and wanted["train.max_grad_norm"] == "0", wanted
    cfg = compose_config(["sweep=paper_sd21"])
    grids = OmegaConf.to_container(OmegaConf.load(REPO / "sweeps" / "paper_sd21.yaml").hydra.sweeper.grids)
    (theirs,) = [g for g in grids if g.get("method") == "bilevel" and g.get("method.solver") == "alternating"]
    assert cfg.model.name == "sd21" and cfg.data.name == "coco" and cfg.eraser.name == "esd"
    for key, value in wanted.items():
        got = theirs[key] if key.startswith("method.") else OmegaConf.select(cfg, key)
        same = got == value or (isinstance(got, (int, float)) and float(got) == float(value))
        assert same, f"{key}: the preset has {got!r}, the authors {value!r}"


def test_a_config_file_read_twice_is_parsed_once_yet_each_reader_gets_its_own_copy(tmp_path, monkeypatch):
    """harness.compose.read_yaml: parsed once while the file is unchanged (planning reads the
    same files for every cell), read again when it changes; interpolations survive the cache."""
    import os

    from omegaconf import OmegaConf

    from harness import compose as compose_module

    path = tmp_path / "model.yaml"
    path.write_text("name: tiny\nwidth: 32\nhalf: ${width}\nunset: ???\n")
    parses = []
    real_load = OmegaConf.load
    monkeypatch.setattr(OmegaConf, "load", lambda p: parses.append(p) or real_load(p))
    first, second = compose_module.read_yaml(path), compose_module.read_yaml(path)
    assert len(parses) == 1
    first.width = 64  # a reader's change stays its own
    assert second.width == 32 and second.half == 32 and OmegaConf.is_missing(second, "unset")
    assert compose_module.read_yaml(path).width == 32
    path.write_text("name: tiny\nwidth: 48\nhalf: ${width}\nunset: ???\n")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))  # a coarse clock: a new mtime
    assert compose_module.read_yaml(path).half == 48 and len(parses) == 2
