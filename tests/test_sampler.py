"""Two-stream sampler: deterministic, resumable, one pass over the labeled set per epoch."""

from __future__ import annotations

from itertools import islice

import pytest

from ssmis.data.sampler import TwoStreamBatchSampler
from ssmis.errors import SSMISError


def _take(sampler: TwoStreamBatchSampler, n: int) -> list[list[tuple[int, int]]]:
    return list(islice(iter(sampler), n))


def test_deterministic_and_seed_dependent() -> None:
    a = _take(TwoStreamBatchSampler(10, 7, 3, 2, seed=5), 20)
    assert a == _take(TwoStreamBatchSampler(10, 7, 3, 2, seed=5), 20)
    assert a != _take(TwoStreamBatchSampler(10, 7, 3, 2, seed=6), 20)


def test_resume_equals_uninterrupted() -> None:
    full = _take(TwoStreamBatchSampler(10, 7, 3, 2, seed=1), 40)
    for k in (0, 1, 3, 17, 39):
        assert _take(TwoStreamBatchSampler(10, 7, 3, 2, seed=1, start_batch=k), 40 - k) == full[k:]


def test_resume_far_ahead_is_cheap() -> None:
    sampler = TwoStreamBatchSampler(1312, 1244, 12, 12, seed=0, start_batch=10**9)
    assert len(next(iter(sampler))) == 24


def test_labeled_epochs_and_index_ranges() -> None:
    nl, nu, lbs, ubs = 11, 9, 3, 4
    sampler = TwoStreamBatchSampler(nl, nu, lbs, ubs, seed=2)
    assert sampler.batches_per_epoch == 3
    batches = _take(sampler, 30)
    for epoch in range(10):
        labeled = [i for b in batches[3 * epoch: 3 * epoch + 3] for i, _ in b[:lbs]]
        assert len(labeled) == len(set(labeled)) == 9  # remainder (2) dropped
        assert all(0 <= i < nl for i in labeled)
    unlabeled = [i for b in batches for i, _ in b[lbs:]]
    assert all(nl <= i < nl + nu for i in unlabeled)
    # endless concatenation of permutations: every full pass holds each index once
    for p in range(len(unlabeled) // nu):
        assert sorted(unlabeled[p * nu:(p + 1) * nu]) == list(range(nl, nl + nu))
    seeds = [s for b in batches for _, s in b]
    assert len(set(seeds)) == len(seeds)


def test_no_unlabeled_stream() -> None:
    batches = _take(TwoStreamBatchSampler(5, 0, 2, 0, seed=0), 4)
    assert all(len(b) == 2 and all(i < 5 for i, _ in b) for b in batches)


def test_fewer_labeled_than_batch_samples_with_replacement() -> None:
    batches = _take(TwoStreamBatchSampler(2, 3, 5, 1, seed=0), 6)
    for b in batches:
        labeled = sorted(i for i, _ in b[:5])
        assert labeled.count(0) in (2, 3) and labeled.count(1) in (2, 3)
    assert _take(TwoStreamBatchSampler(2, 3, 5, 1, seed=0, start_batch=2), 4) == batches[2:]


def test_invalid_arguments() -> None:
    with pytest.raises(SSMISError, match="unlabeled split is empty"):
        TwoStreamBatchSampler(4, 0, 2, 2, seed=0)
    with pytest.raises(SSMISError, match="labeled' is empty"):
        TwoStreamBatchSampler(0, 4, 2, 2, seed=0)
    with pytest.raises(SSMISError, match="train.batch_size"):
        TwoStreamBatchSampler(4, 4, 0, 2, seed=0)
