"""The unpruned teacher, evaluated as it is: the first row of the paper's tables.

    θ ← θ_teacher                            # no pruning, no training
    evaluate(θ)                              # the same evaluation as every other cell

A reference cell: it depends on the teacher, the data and the evaluation only, so one
teacher cell serves every pruning ratio, seed and concept set of a sweep."""

from __future__ import annotations

from harness.method import Method, register


@register
class Teacher(Method):
    name = "teacher"
    common_sections = ("model", "data", "method", "eval")
    prunes = False
    erases = False
    order = 0

    @classmethod
    def trained_steps(cls, cfg):
        return None

    @classmethod
    def work(cls, cfg):
        return []  # evaluated as it is

    def stages(self):
        return iter(())
