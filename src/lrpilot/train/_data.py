"""Reproducible, resumable data order.

Epoch ``e`` visits the training set in the order ``torch.randperm(N)`` drawn from a
private ``torch.Generator`` seeded with ``seed * 1_000_003 + e`` (never the global RNG,
so model code that draws random numbers cannot change the order). The epoch is cut into
micro-batches of ``batch_size`` (the last may be short) and these into groups of
``accumulate`` micro-batches, one group per optimizer step. A position in the run is
therefore just ``(epoch, micro-batch index)``, which is what checkpoints store.

In-memory ``TensorDataset`` s are indexed directly (one gather per tensor per batch, no
per-sample collate); any other map-style dataset goes through a ``DataLoader`` driven by
the same index lists.

Under ``torchrun`` :class:`ShardedOrder` deals the same seeded permutation out across
processes: padded by wrapping around to a multiple of the world size and dealt out
``perm[rank::world]``, exactly as ``torch.utils.data.DistributedSampler`` does with
``drop_last=False``. Every process therefore runs the same number of micro-batches.
Since ``ceil(ceil(N/W)/b) = ceil(N/(W*b))``, the optimizer steps per epoch equal those
of a single process with batch ``W*b``: the schedule sees the same steps.
:func:`make_order` picks the order for this process.

>>> import torch
>>> from torch.utils.data import TensorDataset
>>> order = DataOrder(10, batch_size=4, accumulate=1, seed=0)
>>> [len(b) for b in order.micro_batches(0)]
[4, 4, 2]
>>> bool(torch.equal(torch.cat(order.micro_batches(0)).sort().values, torch.arange(10)))
True
>>> order = ShardedOrder(10, batch_size=2, accumulate=1, seed=0, rank=1, world_size=4)
>>> [len(b) for b in order.micro_batches(0)], order.steps_per_epoch()
([2, 1], 2)
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lrpilot._distributed import current_env
from lrpilot.errors import check_int

Batch = tuple[torch.Tensor, torch.Tensor]


class DataOrder:
    """Which sample indices each optimizer step of each epoch uses."""

    def __init__(self, num_samples: int, batch_size: int, accumulate: int, seed: int) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.accumulate = accumulate
        self.seed = seed

    def permutation(self, epoch: int) -> torch.Tensor:
        return _seeded_permutation(self.num_samples, self.seed, epoch)

    def micro_batches(self, epoch: int) -> list[torch.Tensor]:
        return list(torch.split(self.permutation(epoch), self.batch_size))

    def steps_per_epoch(self) -> int:
        micro = -(-self.num_samples // self.batch_size)
        return -(-micro // self.accumulate)

    def steps_in_epoch(self, epoch: int) -> int:
        """Optimizer steps of epoch ``epoch`` (the same for every epoch here)."""
        return self.steps_per_epoch()

    def total_steps(self, epochs: int) -> int:
        """Optimizer steps of a run of ``epochs`` epochs."""
        return sum(self.steps_in_epoch(e) for e in range(epochs))


def _seeded_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    gen = torch.Generator()
    gen.manual_seed((seed * 1_000_003 + epoch) % (2**63 - 1))
    return torch.randperm(n, generator=gen)


class PhasedOrder(DataOrder):
    """Epochs before ``switch_epoch`` visit only the samples ``first`` (indices into the
    dataset), in exactly the order :class:`DataOrder` gives a dataset of those samples
    alone (``Subset(data, first)``, ``first`` sorted); from ``switch_epoch`` on, every
    sample, as :class:`DataOrder` over the whole dataset. A run trained on the subset
    therefore continues bit-identically on the whole dataset at an epoch boundary (the
    autopilot trains on its decision split once its decisions are made).

    >>> order = PhasedOrder(torch.tensor([0, 2, 4, 6]), 8, batch_size=2, accumulate=1,
    ...                     seed=0, switch_epoch=1)
    >>> [order.steps_in_epoch(e) for e in range(3)], order.total_steps(3)
    ([2, 4, 4], 10)
    >>> sub = DataOrder(4, batch_size=2, accumulate=1, seed=0)
    >>> bool(torch.equal(order.permutation(0), torch.tensor([0, 2, 4, 6])[sub.permutation(0)]))
    True
    """

    def __init__(
        self,
        first: torch.Tensor,
        num_samples: int,
        batch_size: int,
        accumulate: int,
        seed: int,
        switch_epoch: int,
    ) -> None:
        super().__init__(num_samples, batch_size, accumulate, seed)
        self.first = first
        self.switch_epoch = check_int("switch_epoch", switch_epoch, low=0)
        self._before = DataOrder(len(first), batch_size, accumulate, seed)

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch < self.switch_epoch:
            return self.first[self._before.permutation(epoch)]
        return super().permutation(epoch)

    def steps_in_epoch(self, epoch: int) -> int:
        if epoch < self.switch_epoch:
            return self._before.steps_per_epoch()
        return self.steps_per_epoch()


class ShardedOrder(DataOrder):
    """:class:`lrpilot.train._data.DataOrder` dealt out across processes (see the module docstring)."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        accumulate: int,
        seed: int,
        rank: int,
        world_size: int,
    ) -> None:
        super().__init__(num_samples, batch_size, accumulate, seed)
        self.rank = check_int("rank", rank, low=0, high=world_size - 1)
        self.world_size = check_int("world_size", world_size, low=1)

    def shard_size(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    def shard(self, epoch: int) -> torch.Tensor:
        perm = self.permutation(epoch)
        total = self.shard_size() * self.world_size
        if total > len(perm):  # wrap around, as DistributedSampler(drop_last=False)
            reps = math.ceil(total / len(perm))
            perm = torch.cat([perm] * reps)[:total]
        return perm[self.rank : total : self.world_size]

    def micro_batches(self, epoch: int) -> list[torch.Tensor]:
        return list(torch.split(self.shard(epoch), self.batch_size))

    def steps_per_epoch(self) -> int:
        micro = -(-self.shard_size() // self.batch_size)
        return -(-micro // self.accumulate)


def make_order(num_samples: int, batch_size: int, accumulate: int, seed: int) -> DataOrder:
    """The loop's data order for this process: sharded under a process group."""
    env = current_env()
    if env.distributed:
        return ShardedOrder(num_samples, batch_size, accumulate, seed, env.rank, env.world_size)
    return DataOrder(num_samples, batch_size, accumulate, seed)


class BatchFetcher:
    """Turns lists of index tensors into ``(inputs, targets)`` batches on ``device``."""

    #: in-memory tensor datasets up to this size are moved to the device once
    DEVICE_COPY_BYTES = 1 << 29

    def __init__(self, dataset: Dataset, device: torch.device) -> None:
        self.dataset = dataset
        self.device = device
        self.tensors: tuple[torch.Tensor, ...] | None = None
        if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
            tensors = tuple(dataset.tensors)
            size = sum(t.numel() * t.element_size() for t in tensors)
            if size <= self.DEVICE_COPY_BYTES:
                tensors = tuple(t.to(device) for t in tensors)
            self.tensors = tensors

    def iterate(self, index_lists: list[torch.Tensor]) -> Iterator[Batch]:
        if self.tensors is not None:
            x, y = self.tensors
            source = x.device  # device checks once, not per batch
            move = source != self.device
            # index lists are made on the CPU; only a dataset elsewhere needs them moved
            check = source.type != "cpu"
            for indices in index_lists:
                if check and indices.device != source:
                    indices = indices.to(source, non_blocking=True)  # no host sync
                xb, yb = x[indices], y[indices]
                if move:
                    xb = xb.to(self.device, non_blocking=True)
                    yb = yb.to(self.device, non_blocking=True)
                yield xb, yb
            return
        batch_sampler = [indices.tolist() for indices in index_lists]
        loader = DataLoader(
            self.dataset, batch_sampler=batch_sampler, pin_memory=self.device.type == "cuda"
        )
        for inputs, targets in loader:
            yield (
                inputs.to(self.device, non_blocking=True),
                targets.to(self.device, non_blocking=True),
            )

    def sequential(self, batch_size: int) -> Iterator[Batch]:
        """Batches in dataset order (views, no gather, for in-memory tensor datasets)."""
        if self.tensors is None:
            yield from self.iterate(list(torch.arange(len(self.dataset)).split(batch_size)))
            return
        x, y = self.tensors
        for begin in range(0, len(x), batch_size):
            xb, yb = x[begin : begin + batch_size], y[begin : begin + batch_size]
            if xb.device != self.device:
                xb = xb.to(self.device, non_blocking=True)
                yb = yb.to(self.device, non_blocking=True)
            yield xb, yb


def eval_batches(dataset: Dataset, batch_size: int, device: torch.device) -> Iterator[Batch]:
    """Sequential batches over a validation set."""
    n = len(dataset)
    yield from BatchFetcher(dataset, device).iterate(list(torch.arange(n).split(batch_size)))
