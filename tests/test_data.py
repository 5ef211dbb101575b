"""Data: the world's sets, COCO in the authors' layout, concept folders and tables; missing
paths fail in one line naming them."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from harness.concepts import DOMAINS
from harness.data.real import CocoCaptions, ConceptImages, write_coco
from harness.data.streams import BatchStream
from harness.data.world import concept_set, finetune_set, heldout_set
from harness.errors import ConfigError, MissingInputError
from harness.world import STYLES, Scene, render
from tests.conftest import compose

ART = DOMAINS["art"]


def _png(colour, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def coco(tmp_path):
    # the authors' README names files COCO_<split>2017_<id>.jpg: both layouts load
    return write_coco(tmp_path / "coco", {"train": 3, "val": 2}, lambda split, i: Image.new("RGB", (48, 32), (10 * i, 100, 200)),
                      authors_names=True)


def test_world_finetune_set_has_no_style_and_concept_set_only_styles():
    cfg = compose().data
    ft = finetune_set(cfg, 16)
    assert len(ft) == cfg.finetune_size and all("style" not in c for c in ft.captions)
    styles = [DOMAINS["world"]["stripes"], DOMAINS["world"]["dots"]]
    cs = concept_set(cfg, 16, styles)
    assert len(cs) == 2 * cfg.concept_size
    assert {c.split("style of ")[1] for c in cs.captions} == {"stripes", "dots"}
    item = cs[0]
    assert item["image"].shape == (3, 16, 16) and -1 <= item["image"].min() and item["image"].max() <= 1


def test_world_is_deterministic_and_heldout_differs_from_training():
    cfg = compose().data
    a, b = finetune_set(cfg, 16), finetune_set(cfg, 16)
    assert torch.equal(a.pixels, b.pixels) and a.captions == b.captions
    held = heldout_set(cfg, 16, None, 8)
    assert not torch.equal(held.pixels[:4], a.pixels[:4])


def test_styles_are_visually_distinct():
    scene = Scene("circle", "red", "large", 0.5, 0.5)
    plain = render(scene)
    renders = {s: render(Scene(scene.shape, scene.colour, scene.size, 0.5, 0.5, s)) for s in STYLES}
    for s, im in renders.items():
        assert np.abs(im.astype(int) - plain).mean() > 5, s
    keys = list(renders)
    for i, s in enumerate(keys):
        for t in keys[i + 1 :]:
            assert np.abs(renders[s].astype(int) - renders[t]).mean() > 5, (s, t)


def test_batch_streams_are_seekable():
    cfg = compose().data
    stream = BatchStream(finetune_set(cfg, 16), 8, seed=3)
    it = stream.iterate(0)
    batches = [next(it) for _ in range(12)]  # crosses an epoch boundary (64 items)
    resumed = next(stream.iterate(9))
    assert torch.equal(resumed["images"], batches[9]["images"]) and resumed["captions"] == batches[9]["captions"]


def test_coco_layout_loads(coco):
    train = CocoCaptions(coco, "train", 16)
    assert len(train) == 6
    item = train[0]
    assert item["image"].shape == (3, 16, 16) and item["caption"] == "photo 0 a"
    assert len(CocoCaptions(coco, "val", 16, limit=3)) == 3


def test_missing_coco_names_the_missing_path(tmp_path):
    with pytest.raises(MissingInputError, match="annotations/captions_train2017.json"):
        CocoCaptions(tmp_path, "train", 16)


def test_concept_table_filters_by_concept(tmp_path):
    table = pa.table({
        "image": [{"bytes": _png((200, 0, 0))}, {"bytes": _png((0, 200, 0))}, {"bytes": _png((0, 0, 200))}],
        "text": ["starry night by Vincent van Gogh", "water lilies by Claude Monet", "a cat"],
        "style": ["Van Gogh", "Monet", "none"],
    })
    path = tmp_path / "concepts.parquet"
    pq.write_table(table, path)
    ds = ConceptImages(path, [ART["van_gogh"]], 16)
    assert len(ds) == 1 and ds[0]["caption"].startswith("starry night")
    assert ds[0]["image"][0].mean() > 0.5  # the red one
    arrow = tmp_path / "concepts.arrow"
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    assert len(ConceptImages(arrow, [ART["van_gogh"], ART["monet"]], 16)) == 2
    with pytest.raises(ConfigError, match="concepts.erase"):
        ConceptImages(path, [ART["picasso"]], 16)


def test_concept_folder_with_captions(tmp_path):
    folder = tmp_path / "concepts" / "monet"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(_png((1, 2, 3)))
    (folder / "b.png").write_bytes(_png((4, 5, 6)))
    (folder / "captions.jsonl").write_text(json.dumps({"file": "a.png", "caption": "a pond by Claude Monet"}) + "\n")
    ds = ConceptImages(tmp_path / "concepts", [ART["monet"]], 16)
    assert [ds[i]["caption"] for i in range(2)] == ["a pond by Claude Monet", "a painting by Claude Monet"]


def test_missing_concept_source_names_it(tmp_path):
    with pytest.raises(MissingInputError, match="data.concept_source="):
        ConceptImages(tmp_path / "nope.parquet", [ART["monet"]], 16)
