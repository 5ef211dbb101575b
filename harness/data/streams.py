"""Endless, seekable batch streams: batch i of a stream is a pure function of (seed, i).

This is what makes resume exact: a checkpoint stores how many batches each stream has given,
and a resumed run draws the same batches an uninterrupted run would have."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset


def collate(items: list[dict]) -> dict:
    return {"images": torch.stack([it["image"] for it in items]), "captions": [it["caption"] for it in items]}


class _Indices:
    """A batch sampler over batch numbers [start, ∞)."""

    def __init__(self, stream: BatchStream, start: int):
        self.stream, self.start = stream, start

    def __iter__(self):
        i = self.start
        while True:
            yield self.stream.indices(i)
            i += 1


class BatchStream:
    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0):
        if len(dataset) == 0:
            raise ValueError("a batch stream needs a non-empty data set")
        self.dataset, self.batch_size, self.seed, self.num_workers = dataset, batch_size, seed, num_workers
        self._epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(len(self.dataset), generator=g)
        return self._perm

    def indices(self, i: int) -> list[int]:
        """Dataset indices of batch i: consecutive slices of per-epoch permutations."""
        n = len(self.dataset)
        out = []
        for k in range(i * self.batch_size, (i + 1) * self.batch_size):
            out.append(int(self._permutation(k // n)[k % n]))
        return out

    def iterate(self, start: int = 0) -> Iterator[dict]:
        """Batches start, start+1, ... (loaded by worker processes when num_workers > 0)."""
        if self.num_workers == 0 and hasattr(self.dataset, "__getitems__"):
            i = start
            while True:
                yield collate(self.dataset.__getitems__(self.indices(i)))
                i += 1
        loader = DataLoader(
            self.dataset,
            batch_sampler=_Indices(self, start),
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )
        yield from loader
