"""Data sets by name (`data.name`): the Concept World or real-scale COCO + concept images."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from torch.utils.data import Dataset

from harness.concepts import Concept
from harness.data.streams import BatchStream, collate
from harness.errors import ConfigError

DATA_NAMES = ("world", "coco")


@dataclass
class DataSets:
    finetune: Dataset  # lower level: no concept to erase anywhere in it
    make_concept: Callable[[], Dataset]  # upper level: images + captions of the concepts to erase
    heldout_neutral: Dataset  # evaluation: prompts (and real images) with no concept
    heldout_concept: Callable[[Concept], Dataset]  # evaluation: one concept's prompts and images
    # Image evaluation: the first n items of the held-out stream of a concept (None: neutral),
    # however many n is (the held-out sets above are their first data.heldout_size items)...
    evaluation_set: Callable[[Concept | None, int], Dataset] | None = None
    # ...and n real images from a stream of their own: the fixed reference of FID and CMMD
    reference_set: Callable[[int], Dataset] | None = None

    @cached_property
    def concept(self) -> Dataset:
        """Built on first use: distillation alone never needs it."""
        return self.make_concept()


def build_data(data_cfg, resolution: int, erase: list[Concept]) -> DataSets:
    if data_cfg.name == "world":
        from harness.data import world

        n = data_cfg.heldout_size
        return DataSets(
            finetune=world.finetune_set(data_cfg, resolution),
            make_concept=lambda: world.concept_set(data_cfg, resolution, erase),
            heldout_neutral=world.heldout_set(data_cfg, resolution, None, n),
            heldout_concept=lambda c: world.heldout_set(data_cfg, resolution, [c], n),
            evaluation_set=lambda c, k: world.heldout_set(data_cfg, resolution, None if c is None else [c], k),
            reference_set=lambda k: world.reference_set(data_cfg, resolution, k),
        )
    if data_cfg.name == "coco":
        from harness.data.real import CocoCaptions, ConceptImages

        return DataSets(
            finetune=CocoCaptions(data_cfg.root, "train", resolution, data_cfg.get("limit")),
            make_concept=lambda: ConceptImages(data_cfg.concept_source, erase, resolution),
            heldout_neutral=CocoCaptions(data_cfg.root, "val", resolution, data_cfg.heldout_size),
            heldout_concept=lambda c: ConceptImages(
                data_cfg.get("heldout_concept_source") or data_cfg.concept_source, [c], resolution
            ),
            evaluation_set=lambda c, k: CocoCaptions(data_cfg.root, "val", resolution, k) if c is None else ConceptImages(
                data_cfg.get("heldout_concept_source") or data_cfg.concept_source, [c], resolution
            ),
        )
    raise ConfigError("data", data_cfg.name, f"one of {', '.join(DATA_NAMES)}")


__all__ = ["BatchStream", "DataSets", "build_data", "collate"]
