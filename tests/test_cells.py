"""Cell identity: what changes a cell's id and what does not."""

from __future__ import annotations

from harness.cell import Cell, cell_id
from tests.conftest import compose


def test_id_is_stable_and_short():
    assert cell_id(compose()) == cell_id(compose())
    assert len(cell_id(compose())) == 10


def test_paths_tracking_and_runtime_do_not_change_the_id(tmp_path):
    base = cell_id(compose())
    for override in (f"out_dir={tmp_path}", "tracking.uri=http://127.0.0.1:5000", "runtime.checkpoint_every=7",
                     "runtime.log_every=3", "tracking.parent_run_id=abc", "runtime.device=cpu"):
        assert cell_id(compose([override])) == base, override


def test_semantic_keys_change_the_id():
    base = cell_id(compose())
    for override in ("seed=1", "pruning.ratio=0.5", "finetune.lr=1e-3", "finetune.loss.feature_kd=0.2",
                     "method=bilevel", "train.grad_accum=2"):
        assert cell_id(compose([override])) != base, override
    # an architecture key (on the random-init model: the shipped teacher fits one architecture)
    assert cell_id(compose(["model=tiny", "model.unet.layers_per_block=2"])) != cell_id(compose(["model=tiny"]))


def test_distill_ignores_concepts_eraser_and_other_methods_keys():
    base = cell_id(compose())
    for override in ("concepts=trio", "eraser=concept_ablation", "eraser.eta=2.0", "+method.K=7"):
        assert cell_id(compose([override])) == base, override


def test_erasing_methods_depend_on_concepts_eraser_and_k():
    bilevel = cell_id(compose(["method=bilevel"]))
    assert cell_id(compose(["method=bilevel", "method.K=20"])) != bilevel
    assert cell_id(compose(["method=bilevel", "concepts=trio"])) != bilevel
    two = cell_id(compose(["method=two_stage"]))
    assert cell_id(compose(["method=two_stage", "eraser=concept_ablation"])) != two


def test_cell_folder_lives_under_out_dir(tmp_path):
    cell = Cell(compose([f"out_dir={tmp_path}"]))
    assert cell.dir == tmp_path / "cells" / cell.id
    assert cell.state() == "new"


def test_every_file_under_out_dir_gets_the_umasks_mode(tmp_path):
    """One permission policy: with a lab's umask 002 every file a cell writes (weights,
    checkpoints, metrics, MLflow store and artifacts) is 0664; safetensors alone wrote 0600."""
    import os
    import stat

    from harness.runner import run_cell

    before = os.umask(0o002)
    try:
        run_cell(compose(["finetune.steps=4", "runtime.checkpoint_every=2", "eval.backbone=none"], out_dir=tmp_path))
    finally:
        os.umask(before)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "student.safetensors" for p in files) and any(p.suffix == ".pt" for p in files)
    wrong = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files if stat.S_IMODE(p.stat().st_mode) != 0o664}
    assert not wrong, wrong
