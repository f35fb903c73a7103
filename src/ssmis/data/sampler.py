"""Two-stream batch sampler: deterministic, endless and resumable at any batch.

Each batch is a pure function of ``(seed, batch number)``: the labeled "epoch" a batch falls in
and the position in the unlabeled stream are computed, not iterated to, and every sample carries
its own augmentation seed. So a run resumed at batch ``k`` sees exactly the batches a run that
never stopped would have seen, whatever the number of DataLoader workers.

The streams follow SSL4MIS's ``TwoStreamBatchSampler``: the labeled stream is a fresh random
permutation of the labeled indices per epoch, cut into groups of ``labeled_batch_size`` (the
remainder dropped); the unlabeled stream is an endless concatenation of permutations. (The
permutations themselves come from numpy ``SeedSequence`` streams, so they are not the same random
draws as the original ``np.random`` calls, only the same procedure.)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ssmis.errors import SSMISError

# Tags that keep the three random streams independent of each other.
_LABELED, _UNLABELED, _SAMPLE = 0, 1, 2


class TwoStreamBatchSampler:
    """Yields ``[(index, sample_seed), ...]``: labeled indices first, then unlabeled ones.

    Labeled indices are ``0..num_labeled-1``; unlabeled ones are offset by ``num_labeled`` so
    that they address the concatenation labeled + unlabeled (see ``TwoStreamDataset``).

    ``num_labeled < labeled_batch_size`` (e.g. one labeled LA case with a batch of 2) would
    give the published sampler no batch at all. Here every batch is then its own "epoch" drawn
    with replacement, balanced: the batch is the head of fresh permutations laid end to end, so
    each labeled index appears ``labeled_batch_size // num_labeled`` or one more times.
    """

    def __init__(
        self,
        num_labeled: int,
        num_unlabeled: int,
        labeled_batch_size: int,
        unlabeled_batch_size: int,
        seed: int,
        start_batch: int = 0,
    ) -> None:
        if labeled_batch_size < 1:
            raise SSMISError(
                f"train.batch_size: {labeled_batch_size} is out of range, expected >= 1"
            )
        if unlabeled_batch_size < 0:
            raise SSMISError(
                f"train.unlabeled_batch_size: {unlabeled_batch_size} is out of range, "
                "expected >= 0"
            )
        if num_labeled < 1:
            raise SSMISError("split 'labeled' is empty: a training batch needs labeled cases")
        if unlabeled_batch_size > 0 and num_unlabeled < 1:
            raise SSMISError(
                f"train.unlabeled_batch_size: {unlabeled_batch_size} unlabeled samples per "
                "batch, but the unlabeled split is empty"
            )
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.num_labeled = num_labeled
        self.num_unlabeled = num_unlabeled
        self.labeled_batch_size = labeled_batch_size
        self.unlabeled_batch_size = unlabeled_batch_size
        self.seed = int(seed)
        self.start_batch = int(start_batch)
        # the one permutation per stream most recently used (consecutive batches share it)
        self._cache: dict[int, tuple[int, np.ndarray]] = {}

    @property
    def batch_size(self) -> int:
        return self.labeled_batch_size + self.unlabeled_batch_size

    @property
    def batches_per_epoch(self) -> int:
        """Batches per pass over the labeled set (SSL4MIS's iterations per "epoch"); 1 when
        there are fewer labeled cases than a batch holds (sampling with replacement)."""
        return max(self.num_labeled // self.labeled_batch_size, 1)

    def _permutation(self, stream: int, number: int, size: int) -> np.ndarray:
        cached = self._cache.get(stream)
        if cached is not None and cached[0] == number:
            return cached[1]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, stream, number]))
        perm = rng.permutation(size)
        self._cache[stream] = (number, perm)
        return perm

    def _sample_seed(self, batch: int, position: int) -> int:
        """63-bit seed for one sample: collisions within a run are practically impossible."""
        state = np.random.SeedSequence([self.seed, _SAMPLE, batch, position]).generate_state(
            1, np.uint64
        )
        return int(state[0] >> np.uint64(1))

    def labeled_indices(self, batch: int) -> list[int]:
        epoch, within = divmod(batch, self.batches_per_epoch)
        if self.num_labeled < self.labeled_batch_size:  # with replacement, see the class doc
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, _LABELED, epoch]))
            reps = -(-self.labeled_batch_size // self.num_labeled)
            perms = np.concatenate([rng.permutation(self.num_labeled) for _ in range(reps)])
            return [int(i) for i in perms[: self.labeled_batch_size]]
        perm = self._permutation(_LABELED, epoch, self.num_labeled)
        start = within * self.labeled_batch_size
        return [int(i) for i in perm[start: start + self.labeled_batch_size]]

    def unlabeled_indices(self, batch: int) -> list[int]:
        """Positions ``batch*ubs ..`` of the endless stream (a batch may span two passes)."""
        out: list[int] = []
        first = batch * self.unlabeled_batch_size
        for pos in range(first, first + self.unlabeled_batch_size):
            number, offset = divmod(pos, self.num_unlabeled)
            perm = self._permutation(_UNLABELED, number, self.num_unlabeled)
            out.append(self.num_labeled + int(perm[offset]))
        return out

    def batch(self, batch: int) -> list[tuple[int, int]]:
        """Batch number ``batch`` of the sequence, computed directly (O(batch size))."""
        indices = self.labeled_indices(batch)
        if self.unlabeled_batch_size:
            indices += self.unlabeled_indices(batch)
        return [(idx, self._sample_seed(batch, pos)) for pos, idx in enumerate(indices)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        b = self.start_batch
        while True:
            yield self.batch(b)
            b += 1


class RankShardSampler:
    """The share of one process (``rank`` of ``world_size``) of a :class:`TwoStreamBatchSampler`.

    Under DDP every process draws the same *global* batch ``b`` (a pure function of the seed and
    ``b``) and keeps a contiguous slice of each stream: labeled positions
    ``[r L/N, (r+1) L/N)`` and unlabeled positions ``[r U/N, (r+1) U/N)`` of the global batch,
    each sample with the augmentation seed it has in the global batch. So the union of the
    ranks' batches is exactly the single-process batch ``b`` (same indices, same augmentations),
    and a run resumed at batch ``k`` on any number of processes continues the same global
    stream. ``L`` (``train.batch_size``) and ``U`` (``train.unlabeled_batch_size``) are global
    and must be multiples of ``world_size``.

    Raises :class:`SSMISError` naming ``train.batch_size`` / ``train.unlabeled_batch_size``
    when a stream does not split evenly.
    """

    def __init__(self, sampler: TwoStreamBatchSampler, rank: int, world_size: int) -> None:
        check_batch_split(sampler.labeled_batch_size, sampler.unlabeled_batch_size, world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.sampler = sampler
        self.rank = rank
        self.world_size = world_size

    @property
    def labeled_per_rank(self) -> int:
        return self.sampler.labeled_batch_size // self.world_size

    @property
    def unlabeled_per_rank(self) -> int:
        return self.sampler.unlabeled_batch_size // self.world_size

    def batch(self, batch: int) -> list[tuple[int, int]]:
        """This rank's slice of global batch ``batch``: labeled first, then unlabeled."""
        full = self.sampler.batch(batch)
        lbs = self.sampler.labeled_batch_size
        nl, nu = self.labeled_per_rank, self.unlabeled_per_rank
        own = full[self.rank * nl: (self.rank + 1) * nl]
        if nu:
            own += full[lbs + self.rank * nu: lbs + (self.rank + 1) * nu]
        return own

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        b = self.sampler.start_batch
        while True:
            yield self.batch(b)
            b += 1


def check_batch_split(labeled: int, unlabeled: int, world_size: int) -> None:
    """Refuse global batches that do not split evenly over ``world_size`` processes."""
    for key, value in (("train.batch_size", labeled), ("train.unlabeled_batch_size", unlabeled)):
        if value % world_size:
            raise SSMISError(
                f"{key}: {value} is the global batch and does not split over {world_size} "
                f"processes; expected a multiple of {world_size} (each process gets "
                f"{key.split('.')[1]} / {world_size})"
            )
