"""A cell as one flat record: its flattened config (what MLflow holds as params), its final
metrics (evaluation, cost/*, pruning/*), its state, and what tables group it by (method label,
concept set, ratio, K, seed, kernel set). The sweep's table, `harness.jobs status`, tracking and
`analysis` all read cells through this one record; MLflow and the cells on disk give the same."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from harness.errors import ConfigError
from harness.method import get_method


@dataclass
class Record:
    cell: str
    state: str  # completed | failed | running | missing
    params: dict[str, str] = field(default_factory=dict)  # the flattened config
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    depends_on: str | None = None  # the distill cell an erasing cell starts from (two-stage's stage 1)
    kernel_set: str | None = None  # what decided its numbers beyond the config (harness/numerics.py); None: not recorded

    def param(self, key: str, default=None):
        value = self.params.get(key)
        if value is None:
            return default
        try:
            return json.loads(value)
        except (json.JSONDecodeError, TypeError):
            return value

    @property
    def method(self) -> str:
        return self.param("method.name", "")

    def config(self):
        """The cell's config, rebuilt from its flattened params (for what a method declares
        as a function of its config, e.g. `trained_steps`)."""
        from omegaconf import OmegaConf

        tree: dict = {}
        for key, value in self.params.items():
            node = tree
            *path, leaf = key.split(".")
            for part in path:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    break
            else:
                node[leaf] = plain(value)
        return OmegaConf.create(tree)

    @property
    def kind(self):
        """The method's class (harness.method): what it declares about its cells."""
        return get_method(self.method)

    @property
    def erases(self) -> bool:
        return self.kind.erases

    @property
    def prunes(self) -> bool:
        return self.kind.prunes

    @property
    def ratio(self) -> float | None:
        return float(self.param("pruning.ratio")) if self.prunes else None

    @property
    def K(self) -> int | None:
        """The method's inner-steps key (bilevel: lower steps per upper step), if it has one."""
        key = self.kind.inner_steps_key
        return int(self.param(key)) if key and self.param(key) is not None else None

    @property
    def seed(self) -> int:
        return int(self.param("seed", 0))

    @property
    def concepts(self) -> tuple[str, ...]:
        return tuple(self.param("concepts.erase", []))

    @property
    def retained(self) -> tuple[str, ...]:
        return tuple(self.param("concepts.retain", []))

    @property
    def label(self) -> str:
        return method_label(self.params)

    @property
    def loss(self) -> str:
        return loss_label(self.params)

    @property
    def real_scale(self) -> bool:
        return self.param("model.name") == "sd21"


UNRECORDED = "kernels not recorded"


def kernel_split(records: list[Record]):
    """Rows of a table never average cells computed by different kernel sets (AVX2 vs
    AVX-512 moved a distill cell's FID from 2.27 to 3.50): when the completed cells of a table
    come from more than one, this gives each cell's kernel set, to be part of its row's key and
    label; otherwise None for every cell (and the table's note names the one kernel set)."""
    found = {r.kernel_set or UNRECORDED for r in records if r.state == "completed"}
    if len(found) <= 1:
        return lambda r: None
    return lambda r: r.kernel_set or UNRECORDED


def kernel_note(records: list[Record]) -> str:
    found = sorted({r.kernel_set or UNRECORDED for r in records if r.state == "completed"})
    if not found:
        return ""
    if len(found) == 1:
        return f"Kernel set: {found[0]}."
    return f"Cells came from {len(found)} kernel sets ({'; '.join(found)}): each has its own rows, never averaged."


def method_label(params: dict[str, str]) -> str:
    """How a cell's method reads in tables and figures, from its flattened config (the
    method's own `label`)."""
    name = plain(params.get("method.name"))
    try:
        return get_method(name).label(params)
    except ConfigError:  # a record of a method this checkout does not have
        return str(name)


def loss_label(params: dict[str, str]) -> str:
    """The lower-level loss of a cell: diffusion only, KD only, or diffusion + KD."""
    weight = lambda k: float(plain(params.get(f"finetune.loss.{k}")) or 0)  # noqa: E731
    kd = weight("output_kd") > 0 or weight("feature_kd") > 0
    if weight("diffusion") > 0:
        return "diffusion + KD" if kd else "diffusion only"
    return "KD only"


def plain(value):
    try:
        return json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        return value


# -- from disk ----------------------------------------------------------------------------
def from_cells(cells) -> list[Record]:
    """Records of harness.cell.Cell objects (their results.json), as MLflow would hold them."""
    from omegaconf import OmegaConf

    from harness.tracking import flatten, summary_values

    records = []
    for cell in cells:
        params = flatten(OmegaConf.to_container(cell.cfg, resolve=True))
        results = cell.results()
        state = {"completed": "completed", "failed": "failed", "partial": "running"}.get(cell.state(), "missing")
        records.append(Record(cell.id, state, params, summary_values(results) if results else {}, None,
                              (results or {}).get("depends_on"), (results or {}).get("kernel_set")))
    return records


# The config keys that place a cell in a table row: a sweep's cells.json carries them, so a
# cell that never ran still gets its row, marked missing.
ROW_KEYS = ("method.name", "method.solver", "method.K", "eraser.name", "concepts.erase", "concepts.retain",
            "pruning.ratio", "seed", "model.name", "finetune.steps", "finetune.loss.diffusion",
            "finetune.loss.output_kd", "finetune.loss.feature_kd")


def row_params(params: dict[str, str]) -> dict[str, str]:
    return {k: params[k] for k in ROW_KEYS if k in params}
