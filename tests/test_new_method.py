"""A method added without touching this repository: one module and one config in a folder of
its own (HARNESS_METHODS). It runs in a sweep beside a built-in method, its key is checked like
any other, and the sweep's table shows it under its own label."""

from __future__ import annotations

import subprocess
import textwrap

from tests.conftest import REPO, SMALL, SMALL_WORLD, run_cli

MODULE = '''
"""Distillation with the normalisation layers frozen: only Linear and Conv weights train."""

from torch import nn

from harness import schema as S
from harness.method import Method, register
from harness.trainer import Optim
from methods.distill import FinetuneStage


class FrozenNormStage(FinetuneStage):
    """The distill stage (the lower loss on the fine-tuning stream), norms left out of its optimizer."""

    def optimizers(self):
        norms = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d)
        frozen = {id(p) for m in self.ctx.student.modules() if isinstance(m, norms) for p in m.parameters()}
        trained = [p for p in self.ctx.student.parameters() if id(p) not in frozen]
        ft = self.ctx.cfg.finetune
        return {"lower": Optim(trained, ft.lr * self.ctx.cfg.method.lr_scale, ft.weight_decay, ft.warmup_steps)}


@register
class FrozenNormDistill(Method):
    name = "frozen_norm_distill"
    erases = False
    order = 20
    keys = {"lr_scale": S.positive()}

    @classmethod
    def label(cls, params):
        return "distill, norms frozen"

    def stages(self):
        yield FrozenNormStage(self.ctx)
'''

CONFIG = """
# Distillation with frozen normalisation layers (a method kept outside the harness).
name: frozen_norm_distill
lr_scale: 2.0
"""


def _method_folder(tmp_path):
    folder = tmp_path / "my_methods"
    (folder / "conf" / "method").mkdir(parents=True)
    (folder / "frozen_norm_distill.py").write_text(textwrap.dedent(MODULE))
    (folder / "conf" / "method" / "frozen_norm_distill.yaml").write_text(CONFIG)
    return folder


def test_a_method_from_outside_runs_in_a_sweep_and_shows_in_the_table(tmp_path):
    folder, out = _method_folder(tmp_path), tmp_path / "out"
    before = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    env = {"HARNESS_METHODS": str(folder)}
    args = ["harness", "-m", "method=frozen_norm_distill,distill", *SMALL_WORLD, *SMALL, "eval.backbone=none",
            "tracking.enabled=false", f"out_dir={out}"]
    done = run_cli(args, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (table,) = out.glob("sweeps/*/table.md")
    text = table.read_text()
    assert "distill, norms frozen" in text and "distill only" in text, text
    assert text.index("distill only") < text.index("distill, norms frozen")  # its declared order: after distill
    # its own key is checked like a built-in one
    bad = run_cli(["harness", "method=frozen_norm_distill", "method.lr_scale=-1", *SMALL_WORLD, *SMALL, f"out_dir={tmp_path / 'bad'}"],
                  env=env, timeout=300)
    assert bad.returncode == 2 and "method.lr_scale=-1" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    # without the folder the method is unknown, in one line that names what is accepted
    unknown = run_cli(["harness", "method=frozen_norm_distill", f"out_dir={tmp_path / 'none'}"], timeout=300)
    assert unknown.returncode == 2 and "one of bilevel, distill, teacher, two_stage" in unknown.stderr, unknown.stderr
    after = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    assert after == before  # no file of the repository changed
