"""Real-scale data: MS-COCO 2017 captions as the fine-tuning set, and concept data sets (an
image folder, or a parquet/arrow table with image, caption and style columns) filtered by
concept. Paths are checked up front: a missing one fails in one line naming it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from harness.concepts import Concept
from harness.errors import ConfigError, MissingInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """Resize the shorter side to `resolution`, centre-crop, scale to [-1, 1] (CHW)."""
    image = image.convert("RGB")
    w, h = image.size
    scale = resolution / min(w, h)
    image = image.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(resolution, resolution, 3)
    return data.permute(2, 0, 1).float() / 127.5 - 1.0


def write_coco(root: Path, counts: dict[str, int], image, authors_names: bool = False) -> Path:
    """MS-COCO 2017's layout (what CocoCaptions reads) under `root`: images/<split>2017/ and annotations/captions_<split>2017.json,
    `counts[split]` images (`image(split, i)`: a PIL image), two captions each. `authors_names`:
    the first file of each split named as the authors' README has it (COCO_<split>2017_<id>.jpg)."""
    root = Path(root)
    for split, n in counts.items():
        (root / "images" / f"{split}2017").mkdir(parents=True)
        images, anns = [], []
        for i in range(n):
            name = f"{i:012d}.jpg"
            stored = f"COCO_{split}2017_{name}" if authors_names and i == 0 else name
            image(split, i).save(root / "images" / f"{split}2017" / stored)
            images.append({"id": i, "file_name": name})
            anns += [{"image_id": i, "caption": f"photo {i} a"}, {"image_id": i, "caption": f"photo {i} b"}]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"captions_{split}2017.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return root


class CocoCaptions(Dataset):
    """One item per (image, caption) annotation of `root`/annotations/captions_{split}2017.json,
    images from `root`/images/{split}2017/ (plain or COCO_{split}2017_ prefixed file names)."""

    def __init__(self, root: str | Path, split: str, resolution: int, limit: int | None = None):
        root = Path(root).expanduser()
        ann = root / "annotations" / f"captions_{split}2017.json"
        images = root / "images" / f"{split}2017"
        for path in (ann, images):
            if not path.exists():
                raise MissingInputError(f"data.root={root}: missing {path.relative_to(root)} (MS-COCO 2017 layout expected)")
        meta = json.loads(ann.read_text())
        files = {im["id"]: im["file_name"] for im in meta["images"]}
        self.items = [(files[a["image_id"]], a["caption"].strip()) for a in meta["annotations"] if a["image_id"] in files]
        self.items.sort()
        if limit:
            self.items = self.items[:limit]
        self.images, self.split, self.resolution = images, split, resolution

    def _path(self, name: str) -> Path:
        path = self.images / name
        return path if path.exists() else self.images / f"COCO_{self.split}2017_{name}"

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        name, caption = self.items[i]
        with Image.open(self._path(name)) as im:
            return {"image": to_tensor(im, self.resolution), "caption": caption}


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


class ConceptImages(Dataset):
    """Images of the given concepts from a folder (`root/<concept>/*.png`, captions from an
    optional `captions.jsonl` of {"file", "caption"} or defaulting to the anchor prompt with
    the concept's phrase) or a parquet/arrow table (`image`, `caption`|`text`|`prompt`,
    `style`|`concept`|`artist` columns)."""

    CAPTION_COLUMNS = ("caption", "text", "prompt")
    CONCEPT_COLUMNS = ("style", "concept", "artist")

    def __init__(self, source: str | Path, concepts: list[Concept], resolution: int):
        source = Path(source).expanduser()
        if not source.exists():
            raise MissingInputError(f"data.concept_source={source}: no such file or folder (an image folder or a parquet/arrow table)")
        self.resolution = resolution
        wanted = {_norm(c.name): c for c in concepts}
        self.items: list[tuple[object, str]] = []
        if source.is_dir():
            self._from_folder(source, wanted)
        else:
            self._from_table(source, wanted)
        if not self.items:
            raise ConfigError("concepts.erase", [c.name for c in concepts], f"concepts present in {source}")

    def _from_folder(self, root: Path, wanted: dict) -> None:
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            concept = wanted.get(_norm(folder.name))
            if concept is None:
                continue
            captions = {}
            meta = folder / "captions.jsonl"
            if meta.exists():
                for line in meta.read_text().splitlines():
                    if line.strip():
                        row = json.loads(line)
                        captions[row["file"]] = row["caption"]
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    self.items.append((path, captions.get(path.name, concept.apply(concept.anchor_prompt))))

    def _from_table(self, path: Path, wanted: dict) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if path.suffix == ".parquet":
            table = pq.read_table(path)
        else:
            with pa.memory_map(str(path)) as src:
                try:
                    table = pa.ipc.open_file(src).read_all()
                except pa.ArrowInvalid:
                    table = pa.ipc.open_stream(src).read_all()
        columns = set(table.column_names)
        caption_col = next((c for c in self.CAPTION_COLUMNS if c in columns), None)
        concept_col = next((c for c in self.CONCEPT_COLUMNS if c in columns), None)
        if "image" not in columns or caption_col is None or concept_col is None:
            raise MissingInputError(
                f"data.concept_source={path}: columns {sorted(columns)} lack image, one of "
                f"{'/'.join(self.CAPTION_COLUMNS)} and one of {'/'.join(self.CONCEPT_COLUMNS)}"
            )
        for image, caption, concept in zip(
            table.column("image").to_pylist(), table.column(caption_col).to_pylist(), table.column(concept_col).to_pylist()
        ):
            if _norm(str(concept)) in wanted:
                data = image["bytes"] if isinstance(image, dict) else image
                self.items.append((bytes(data), caption))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        source, caption = self.items[i]
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            return {"image": to_tensor(im, self.resolution), "caption": caption}
