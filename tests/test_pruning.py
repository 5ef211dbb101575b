"""Structural pruning with torch-pruning and the safe round-trip format."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.errors import ConfigError
from harness.models import build_parts
from harness.pruning import example_inputs, feature_blocks, load_pruned, prune_unet, save_pruned
from tests.conftest import compose


@pytest.fixture(scope="module")
def teacher():
    return build_parts(compose().model).unet


@pytest.mark.parametrize("importance", ["magnitude", "random", "taylor"])
def test_pruning_shrinks_and_round_trips_bit_identically(teacher, importance, tmp_path):
    student, report = prune_unet(teacher, 0.3, importance, seed=0)
    assert report.params_after < 0.8 * report.params_before
    assert report.macs_after < report.macs_before
    for m in student.modules():  # GroupNorm stays valid: equal channel groups
        if isinstance(m, nn.GroupNorm):
            assert m.weight.shape[0] % m.num_groups == 0
    inputs = example_inputs(student)
    with torch.no_grad():
        before = student(**inputs).sample
    assert before.shape == example_inputs(teacher)["sample"].shape  # conv_out untouched
    save_pruned(student, report, tmp_path / "student")
    loaded, loaded_report = load_pruned(tmp_path / "student")
    with torch.no_grad():
        after = loaded(**inputs).sample
    assert torch.equal(before, after)
    assert loaded_report.kept_channels == report.kept_channels


def test_kept_channels_index_the_teacher_block_outputs(teacher):
    student, report = prune_unet(teacher, 0.5, "magnitude")
    shapes = {}
    hooks = [b.register_forward_hook(lambda _m, _i, o, n=n: shapes.__setitem__(n, (o[0] if isinstance(o, tuple) else o).shape[1]))
             for n, b in feature_blocks(student).items()]
    with torch.no_grad():
        student(**example_inputs(student))
    for h in hooks:
        h.remove()
    for name, kept in report.kept_channels.items():
        assert len(kept) == shapes[name]
        assert kept == sorted(set(kept))


def test_the_teacher_is_not_modified(teacher):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    prune_unet(teacher, 0.3, "magnitude")
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_outside_unit_interval_is_refused(teacher, ratio):
    with pytest.raises(ConfigError, match="pruning.ratio"):
        prune_unet(teacher, ratio)


@pytest.mark.parametrize("importance", ["magnitude", "random"])
def test_a_small_trace_prunes_the_same_student_as_a_full_size_one(teacher, importance):
    """Pruning traces a small latent (SD 2.1 at its own 64 x 64 ran out of 24 GB): for
    magnitude and random importance that must not change which channels go."""
    from harness.pruning import TRACE_SIZE

    assert TRACE_SIZE < teacher.config.sample_size
    small, small_report = prune_unet(teacher, 0.3, importance, seed=0)
    full, full_report = prune_unet(teacher, 0.3, importance, seed=0, trace_size=teacher.config.sample_size)
    assert small_report == full_report
    a, b = small.state_dict(), full.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
