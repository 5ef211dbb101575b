"""Trained weights are checked before anything uses them.

A weights file is read only as safetensors (no pickles). Before a cell starts:
- its sha256 is compared with the `manifest.json` beside it when that manifest lists it (the
  shipped world and every `python -m harness.world.build` output have one): a flipped byte
  fails in one line naming the file, where it would otherwise train silently on a broken
  teacher;
- its header is read and every tensor's name and shape compared with what the model expects:
  a truncated file or one made for another architecture fails in one line too. What the model
  expects is skipped (it means building the model) when the checksum matched and the manifest
  lists, for this file, the digest of the very architecture asked for: the file is the one that
  was built for it (harness/models/tiny_weights.py).
Verdicts are cached per process by (path, size, mtime): a sweep hashes each file once."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from harness.errors import CorruptInputError
from harness.files import file_version

log = logging.getLogger("harness")
MANIFEST = "manifest.json"
_SHA256: dict[tuple, str] = {}
_VERIFIED: set[tuple] = set()


def sha256(path: Path) -> str:
    key = file_version(path)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


def _listed(path: Path, section: str) -> str | None:
    manifest = path.parent / MANIFEST
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text()).get(section, {}).get(path.name)
    except (json.JSONDecodeError, AttributeError) as exc:
        raise CorruptInputError(f"{manifest}: not a readable manifest ({exc})") from None


def listed_checksum(path: Path) -> str | None:
    """The sha256 the manifest beside `path` lists for it (None: no manifest lists it)."""
    return _listed(path, "checksums")


def architecture_digest(architecture: str) -> str:
    """How a manifest names the architecture a file was built for (its description's sha256)."""
    return hashlib.sha256(architecture.encode()).hexdigest()


def listed_architecture(path: Path) -> str | None:
    """The digest of the architecture the manifest beside `path` says it was built for."""
    return _listed(path, "architectures")


def header_shapes(path: Path, key: str) -> dict[str, list[int]]:
    """Tensor names and shapes from a safetensors header (nothing else is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for a cut or foreign file
        raise CorruptInputError(f"{key}={path}: not a readable safetensors file ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else 'truncated?'})") from None


def verify(path: Path, key: str, expected: Callable[[], dict[str, list[int]]] | None = None, architecture: str = "") -> Path:
    """Check `path` (the value of config key `key`) against its manifest and, when given, the
    tensor names and shapes the model expects (`expected()`: called only when the file was not
    verified for this `architecture` in this process yet). Raises CorruptInputError in one line."""
    path = Path(path)
    cache = (*file_version(path), key, expected is not None, architecture)
    if cache in _VERIFIED:
        return path
    want = listed_checksum(path)
    if want is not None and (got := sha256(path)) != want:
        raise CorruptInputError(f"{key}={path}: sha256 {got[:16]}… differs from {want[:16]}… listed in "
                                f"{path.parent / MANIFEST} (a corrupted or changed file: restore it, or rebuild with python -m harness.world.build)")
    shapes = header_shapes(path, key)
    built_for_it = (want is not None and architecture != ""
                    and listed_architecture(path) == architecture_digest(architecture))
    if expected is not None and not built_for_it:
        expected = expected()
        missing = sorted(set(expected) - set(shapes))
        extra = sorted(set(shapes) - set(expected))
        wrong = sorted(k for k in set(expected) & set(shapes) if list(expected[k]) != shapes[k])
        if missing or extra or wrong:
            what = (f"tensor {wrong[0]} has shape {shapes[wrong[0]]}, the model expects {list(expected[wrong[0]])}" if wrong
                    else f"{len(missing)} tensors missing (e.g. {missing[0]})" if missing
                    else f"{len(extra)} tensors the model does not have (e.g. {extra[0]})")
            raise CorruptInputError(f"{key}={path}: weights for another architecture: {what}")
    if want is None:
        log.info("%s=%s: no %s beside it lists this file; its checksum is not verified", key, path, MANIFEST)
    _VERIFIED.add(cache)
    return path
