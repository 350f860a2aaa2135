"""Loaders: the course's only loader stack (``utils.train`` uses it too).

:func:`make_loader` wraps a ``paddle.io.DataLoader`` in a :class:`PalmLoader` whose epoch is set
explicitly, over a :class:`SeededBatchSampler` whose order depends on ``(seed, epoch)`` only, and
which also deals that order out to the processes of data-parallel training.
"""

import os
import shutil

import numpy as np

from utils.course import import_paddle_quietly
from utils.palm.dataset import PalmDataset

paddle = import_paddle_quietly()


class SeededBatchSampler:
    """Batches of indices; with ``shuffle`` a fresh order per epoch drawn from ``(seed, epoch)`` only,
    so an epoch's batches do not depend on any global random state or on the number of workers.

    With ``num_replicas`` > 1 (data-parallel training, one process per device) the epoch's order is
    padded by repeating its first indices to a multiple of ``num_replicas``, and process ``rank``
    takes every ``num_replicas``-th index starting at ``rank``: the processes together see the order
    of a single process, dealt out. (Paddle's ``DistributedBatchSampler`` shuffles with
    ``RandomState(epoch)``, the same order for every seed.)
    """

    def __init__(self, n, batch_size, shuffle=False, seed=0, drop_last=False, num_replicas=1, rank=0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), not {rank}")
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def shard(self):
        """This process's indices of the current epoch, in order."""
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle \
            else np.arange(self.n)
        if self.num_replicas == 1:
            return order
        total = -(-self.n // self.num_replicas) * self.num_replicas
        return np.resize(order, total)[self.rank :: self.num_replicas]  # resize repeats the first ones

    def __iter__(self):
        shard = self.shard()
        stop = len(shard) - len(shard) % self.batch_size if self.drop_last else len(shard)
        for start in range(0, stop, self.batch_size):
            yield shard[start : start + self.batch_size].tolist()

    def __len__(self):
        size = -(-self.n // self.num_replicas)
        return size // self.batch_size if self.drop_last else -(-size // self.batch_size)


def shared_memory_ok(batch_bytes, num_workers, shm="/dev/shm"):
    """Whether the DataLoader may pass batches through shared memory.

    Containers (AI Studio among them, and Docker's default) often mount a small ``/dev/shm``; a full
    one kills worker processes with a bus error. Require room for every batch in flight, 4x over,
    and at least 256 MiB; where there is no ``/dev/shm`` (macOS, Windows) say no.
    """
    if num_workers == 0 or not os.path.isdir(shm):
        return False
    needed = max(256 * 2**20, 4 * batch_bytes * num_workers * 2)  # Paddle prefetches ~2 batches per worker
    return shutil.disk_usage(shm).free >= needed


def batch_nbytes(dataset, batch_size):
    """Bytes of a batch of ``dataset``'s images: from its ``item_nbytes`` (a :class:`PalmDataset`, also
    inside a ``paddle.io.Subset``) without decoding anything; for another data set, from its first item."""
    base = dataset.dataset if isinstance(dataset, paddle.io.Subset) else dataset
    item = getattr(base, "item_nbytes", None)
    if item is None:
        item = np.asarray(dataset[0][0]).nbytes
    return item * batch_size


class PalmLoader:
    """A ``paddle.io.DataLoader`` whose epoch is set explicitly: each iteration is epoch
    :attr:`epoch` (then the next one), with that epoch's seeded order and augmentations.

    Setting the epoch (:meth:`set_epoch`), instead of counting iterations, is what lets a resumed run
    draw the same batches as an uninterrupted one. A data set that augments receives the epoch
    through its own ``set_epoch`` before the worker processes start (they get a copy of it).
    """

    def __init__(self, loader, sampler, dataset):
        self.loader, self.sampler, self.dataset, self.epoch = loader, sampler, dataset, 0

    def set_epoch(self, epoch):
        """Make the next iteration epoch ``epoch`` (e.g. when resuming training)."""
        self.epoch = int(epoch)

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        set_dataset_epoch = getattr(self.dataset, "set_epoch", None)  # only data sets that augment
        if set_dataset_epoch is not None:
            set_dataset_epoch(self.epoch)
        self.epoch += 1
        iterator = iter(self.loader)
        try:
            yield from iterator
        finally:
            # Leaving an epoch early (break, zip, an error) would leave Paddle's worker processes
            # running until the interpreter exits: its iterator is kept alive by its own thread. In a
            # notebook kernel that is killed, they would even outlive it. Stop them now.
            shutdown = getattr(iterator, "_try_shutdown_all", None)
            if shutdown is not None:
                shutdown()

    def __len__(self):
        return len(self.sampler)

    @property
    def batch_size(self):
        return self.sampler.batch_size


def make_loader(dataset, batch_size=10, shuffle=False, seed=0, num_workers=0, drop_last=False,
                use_shared_memory=None, distributed=False):
    """A :class:`PalmLoader` over ``dataset`` with seeded shuffling: the course's only loader.

    ``num_workers`` > 0 decodes in worker processes; that works from a notebook because the Dataset
    class lives in ``utils/`` (a class defined in a notebook cannot be found by a spawned worker).
    ``use_shared_memory=None`` decides with :func:`shared_memory_ok`. ``distributed=True`` (inside
    ``paddle.distributed.launch``) gives this process its share of every epoch's batches (see
    :class:`SeededBatchSampler`); evaluation loaders are not distributed.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, not {num_workers}")
    replicas = {"num_replicas": paddle.distributed.get_world_size(), "rank": paddle.distributed.get_rank()} \
        if distributed else {}
    sampler = SeededBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                 **replicas)
    if use_shared_memory is None:
        batch_bytes = batch_nbytes(dataset, batch_size) if num_workers > 0 else 0  # 0 workers: unused
        use_shared_memory = shared_memory_ok(batch_bytes, num_workers)
    loader = paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                  use_shared_memory=bool(use_shared_memory))
    return PalmLoader(loader, sampler, dataset)


def make_loaders(root, image_size=224, batch_size=10, augment=True, seed=0, num_workers=0, cache=True,
                 cache_dir=None):
    """``(train_loader, valid_loader)``: the training split shuffled (and augmented if ``augment``),
    the validation split in file order."""
    train = PalmDataset(root, "train", image_size, augment=augment, cache=cache, cache_dir=cache_dir,
                        seed=seed)
    valid = PalmDataset(root, "valid", image_size, cache=cache, cache_dir=cache_dir)
    return (make_loader(train, batch_size, shuffle=True, seed=seed, num_workers=num_workers),
            make_loader(valid, batch_size, num_workers=num_workers))
