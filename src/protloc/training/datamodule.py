"""Data for training: one random crop per training sample per epoch, whole images for validation.

Reproducibility: a crop's position comes from ``numpy.random.default_rng([seed, epoch, position])``
and the order of an epoch from ``default_rng([seed, epoch])``, so the same seed gives the same
batches whatever the number of workers, and a resumed run sees exactly the batches an uninterrupted
one would. The epoch reaches the dataset through the sampler (it yields ``(epoch, position)`` keys):
samplers run in the main process, so this works with persistent workers, which keep their own copy
of the dataset. Under DDP each rank takes every world-size-th key of the same permutation (padded to
equal length, like ``DistributedSampler``), so Lightning's sampler replacement is switched off.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from protloc.data.patches import random_crop
from protloc.inference.normalization import normalize


class EpochSampler(Sampler):
    """Keys ``(epoch, position)``: a seeded permutation per epoch, this rank's share of it."""

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 pad: bool = True) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at the start of every epoch
        self.epoch = epoch

    def _positions(self) -> list[int]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.world_size > 1 and order:
            total = math.ceil(len(order) / self.world_size) * self.world_size
            order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self):
        return iter([(self.epoch, position) for position in self._positions()])

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.size / self.world_size)
        return len(range(self.rank, self.size, self.world_size))


class TrainCrops(Dataset):
    """Item ``(epoch, position)`` -> (normalised crop float32 [4, crop, crop], label vector)."""

    def __init__(self, read: Callable[[str], np.ndarray], ids: Sequence[str], labels: np.ndarray,
                 crop_size: int, seed: int) -> None:
        self.read, self.ids, self.labels = read, list(ids), np.asarray(labels, dtype=np.float32)
        self.crop_size, self.seed = crop_size, seed

    def __len__(self) -> int:
        return len(self.ids)

    def crop(self, epoch: int, position: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, position])
        # On a memory map, random_crop's slice is a view: only the window's pixels are read.
        window = random_crop(self.read(self.ids[position]), self.crop_size, rng)
        return normalize(np.asarray(window, dtype=np.float32))

    def __getitem__(self, key):
        epoch, position = key
        return torch.from_numpy(self.crop(epoch, position)), torch.from_numpy(self.labels[position])


class WholeImages(Dataset):
    """Item ``position`` -> (position, raw image float32 [4, H, W], label vector); normalised per patch later."""

    def __init__(self, read: Callable[[str], np.ndarray], ids: Sequence[str], labels: np.ndarray) -> None:
        self.read, self.ids, self.labels = read, list(ids), np.asarray(labels, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, position: int):
        image = np.asarray(self.read(self.ids[position]), dtype=np.float32)
        return position, torch.from_numpy(image), torch.from_numpy(self.labels[position])


def _rescaled(read, factor: float, sample_id: str) -> np.ndarray:
    from protloc.data.pixel_size import rescale

    return rescale(np.asarray(read(sample_id), dtype=np.float32), factor)


def first_item(batch):
    """Collate for whole images of different sizes: batches of one, unwrapped."""
    return batch[0]


def make_train_loader(dataset: TrainCrops, batch_size: int, seed: int, workers: int, pin_memory: bool,
                      rank: int = 0, world_size: int = 1) -> DataLoader:
    sampler = EpochSampler(len(dataset), seed, shuffle=True, rank=rank, world_size=world_size, pad=True)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        persistent_workers=workers > 0, drop_last=False,
    )


def make_val_loader(dataset: WholeImages, workers: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    # No padding: every rank predicts its own images once and the results are gathered by position.
    positions = list(range(rank, len(dataset), world_size))
    return DataLoader(
        dataset, batch_size=1, sampler=positions, num_workers=workers, collate_fn=first_item,
        persistent_workers=workers > 0,
    )


def _lightning_datamodule_base():
    import lightning.pytorch as pl

    return pl.LightningDataModule


class ProtlocDataModule(_lightning_datamodule_base()):
    """Training crops and validation images of one data set, read through the cache when there is one.

    ``prepare_data`` (Lightning runs it once per node, on local rank 0, before the other ranks go
    on) fills the cache; ``setup`` opens it on every rank.
    """

    def __init__(self, index, train_ids: Sequence[str], val_ids: Sequence[str], *, crop_size: int,
                 batch_size: int, seed: int, workers: int, pin_memory: bool, cache_dir=None,
                 progress: bool | None = None, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale  # images are resized by this factor to the model's pixel size
        self.index, self.train_ids, self.val_ids = index, list(train_ids), list(val_ids)
        self.crop_size, self.batch_size, self.seed = crop_size, batch_size, seed
        self.workers, self.pin_memory, self.progress = workers, pin_memory, progress
        self.cache = None
        if cache_dir is not None:
            from protloc.training.cache import SampleCache

            self.cache = SampleCache(index, cache_dir)

    def prepare_data(self) -> None:
        if self.cache is not None:
            self.cache.build(self.train_ids + self.val_ids, progress=self.progress)

    def reader(self) -> Callable[[str], np.ndarray]:
        read = self.cache.open if self.cache is not None else self.index.load_image
        if self.scale == 1.0:
            return read
        from functools import partial

        return partial(_rescaled, read, self.scale)

    def labels(self, ids: Sequence[str]) -> np.ndarray:
        return np.stack([self.index.label_vector(i) for i in ids]).astype(np.float32)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = TrainCrops(self.reader(), self.train_ids, self.labels(self.train_ids), self.crop_size,
                                    self.seed)
        self.val_set = WholeImages(self.reader(), self.val_ids, self.labels(self.val_ids))

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        return make_train_loader(self.train_set, self.batch_size, self.seed, self.workers, self.pin_memory,
                                 rank=rank, world_size=world)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        return make_val_loader(self.val_set, self.workers, rank=rank, world_size=world)
