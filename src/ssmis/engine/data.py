"""Glue from the experiment config to the data layout (:mod:`ssmis.data.layouts`): split,
checks, training stream and evaluation cases. The engine names no layout: it asks the one
``data.layout`` registers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from ssmis.config import ExperimentConfig
from ssmis.data.augment import build_augmentation
from ssmis.data.datasets import EvalCase, TwoStreamDataset, collate_two_stream
from ssmis.data.layouts import CatalogLayout, Layout, get_layout
from ssmis.data.owndata import CaseReader
from ssmis.data.sampler import RankShardSampler, TwoStreamBatchSampler
from ssmis.data.splits import Split
from ssmis.errors import SSMISError


def build_layout(cfg: ExperimentConfig) -> Layout:
    """The layout object of ``data.layout`` over ``data.root``."""
    return get_layout(cfg.data.layout)(cfg.data)


def build_split(cfg: ExperimentConfig, layout: Layout | None = None) -> Split:
    """``data.split_file`` (checked against the dataset) or the layout's protocol split."""
    return (layout or build_layout(cfg)).split()


def check_data(cfg: ExperimentConfig, split: Split, need_unlabeled: bool,
               layout: Layout | None = None) -> list[str]:
    """Check the split is usable and every file the run will read, before anything is written;
    returns the layout's notes for the run log (e.g. resampled labels).

    Raises:
        SSMISError: an empty list, or one line naming a bad file (see
            :meth:`ssmis.data.layouts.Layout.check_files`).
    """
    layout = layout or build_layout(cfg)
    layout.check_split_nonempty(split, need_unlabeled)
    return layout.check_files(split, need_unlabeled) or []


def _train_transform(cfg: ExperimentConfig) -> Any:
    """The training augmentation named by ``data.augmentation`` (ssl4mis | synfoc)."""
    return build_augmentation(cfg.data.augmentation, cfg.data.patch_size, cfg.data)


def train_batches(
    cfg: ExperimentConfig, split: Split, unlabeled_batch_size: int, start_batch: int,
    rank: int = 0, world_size: int = 1, layout: Layout | None = None,
) -> Iterator[tuple[dict, dict | None]]:
    """Endless (labeled, unlabeled) batches starting at batch ``start_batch`` of the stream;
    with ``world_size`` > 1 this process's share of each global batch (:class:`RankShardSampler`).
    """
    layout = layout or build_layout(cfg)
    transform = _train_transform(cfg)
    unlabeled_ids = split.unlabeled if unlabeled_batch_size > 0 else []
    labeled = layout.train_dataset(split.labeled, transform, with_label=True)
    unlabeled = layout.train_dataset(unlabeled_ids, transform, with_label=False)
    sampler = TwoStreamBatchSampler(
        len(labeled), len(unlabeled), cfg.train.batch_size, unlabeled_batch_size,
        seed=cfg.seed, start_batch=start_batch,
    )
    batch_sampler = (RankShardSampler(sampler, rank, world_size) if world_size > 1
                     else sampler)
    loader = DataLoader(
        TwoStreamDataset(labeled, unlabeled), batch_sampler=batch_sampler,
        collate_fn=collate_two_stream, num_workers=cfg.data.num_workers,
        pin_memory=torch.cuda.is_available(), persistent_workers=cfg.data.num_workers > 0,
    )
    return iter(loader)


def eval_cases(cfg: ExperimentConfig, ids: list[str],
               layout: Layout | None = None) -> Iterator[EvalCase]:
    """Whole evaluation cases of ``ids``, loaded one at a time."""
    return (layout or build_layout(cfg)).eval_cases(ids)


def _catalog_layout(cfg: ExperimentConfig) -> CatalogLayout:
    layout = build_layout(cfg)
    if not isinstance(layout, CatalogLayout):
        raise SSMISError(f"data.layout: {cfg.data.layout} has no case catalog")
    return layout


def own_reader(cfg: ExperimentConfig) -> CaseReader:
    """The case reader of a catalog-backed layout (own data)."""
    return _catalog_layout(cfg).reader


def own_split(cfg: ExperimentConfig) -> Split:
    """The split of a catalog-backed layout (``data.split_file`` checked, or drawn)."""
    return _catalog_layout(cfg).split()
