"""Glue from the experiment config to the data package: split, training stream, eval cases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ssmis.config import ExperimentConfig
from ssmis.data.datasets import (
    EvalCase,
    SliceDataset,
    TwoStreamDataset,
    VolumePatchDataset,
    collate_two_stream,
    load_eval_cases,
)
from ssmis.data.h5 import (
    acdc_slice_path,
    acdc_volume_path,
    check_h5_files,
    check_h5_values,
    la_volume_path,
)
from ssmis.data.sampler import TwoStreamBatchSampler
from ssmis.data.splits import Split, acdc_split, la_split
from ssmis.data.transforms import Compose, RandomCrop3D, RandomGenerator2D, RandomRotFlip3D
from ssmis.errors import SSMISError


def build_split(cfg: ExperimentConfig) -> Split:
    d = cfg.data
    if d.layout == "acdc_h5":
        return acdc_split(d.root, labeled_patients=d.labeled_patients,
                          labeled_slices=d.labeled_slices)
    return la_split(d.root, labeled_count=d.labeled_count or 0, val_count=d.val_count or 0)


def train_paths(cfg: ExperimentConfig, ids: list[str]) -> list[Path]:
    root = cfg.data.root
    if cfg.data.layout == "acdc_h5":
        return [acdc_slice_path(root, i) for i in ids]
    return [la_volume_path(root, i) for i in ids]


def eval_paths(cfg: ExperimentConfig, ids: list[str]) -> list[Path]:
    root = cfg.data.root
    if cfg.data.layout == "acdc_h5":
        return [acdc_volume_path(root, i) for i in ids]
    return [la_volume_path(root, i) for i in ids]


def check_data(cfg: ExperimentConfig, split: Split, need_unlabeled: bool) -> None:
    """Check every file the run will read, before anything is written.

    First the metadata of all files (existence, keys, shapes: fast), then the values (NaN/inf
    in images, label values outside the classes), so that a bad file stops the run before its
    folder exists rather than hours into training.
    """
    for name in ("labeled", "val", "test"):
        if not getattr(split, name):
            raise SSMISError(f"split '{name}' is empty (data.root = {cfg.data.root})")
    if need_unlabeled and not split.unlabeled:
        raise SSMISError("split 'unlabeled' is empty: this method needs unlabeled cases")
    groups = [(train_paths(cfg, split.labeled), True),
              (eval_paths(cfg, split.val), True), (eval_paths(cfg, split.test), True)]
    if need_unlabeled:
        groups.append((train_paths(cfg, split.unlabeled), False))
    for paths, with_label in groups:
        check_h5_files(paths, require_label=with_label)
    for paths, with_label in groups:
        check_h5_values(paths, num_classes=cfg.data.num_classes, require_label=with_label)


def _train_transform(cfg: ExperimentConfig):
    patch = tuple(cfg.data.patch_size)
    if cfg.data.spatial_dims == 2:
        return RandomGenerator2D(patch)
    return Compose([RandomRotFlip3D(), RandomCrop3D(patch)])


def train_batches(
    cfg: ExperimentConfig, split: Split, unlabeled_batch_size: int, start_batch: int
) -> Iterator[tuple[dict, dict | None]]:
    """Endless (labeled, unlabeled) batches starting at batch ``start_batch`` of the stream."""
    d = cfg.data
    transform = _train_transform(cfg)
    dataset_cls = SliceDataset if d.spatial_dims == 2 else VolumePatchDataset
    extra = {"cache": d.cache} if d.spatial_dims == 2 else {}
    labeled = dataset_cls(train_paths(cfg, split.labeled), split.labeled, d.num_classes,
                          transform, with_label=True, **extra)
    unlabeled_ids = split.unlabeled if unlabeled_batch_size > 0 else []
    unlabeled = dataset_cls(train_paths(cfg, unlabeled_ids), unlabeled_ids, d.num_classes,
                            transform, with_label=False, **extra)
    sampler = TwoStreamBatchSampler(
        len(labeled), len(unlabeled), cfg.train.batch_size, unlabeled_batch_size,
        seed=cfg.seed, start_batch=start_batch,
    )
    loader = DataLoader(
        TwoStreamDataset(labeled, unlabeled), batch_sampler=sampler,
        collate_fn=collate_two_stream, num_workers=d.num_workers,
        pin_memory=torch.cuda.is_available(), persistent_workers=d.num_workers > 0,
    )
    return iter(loader)


def eval_cases(cfg: ExperimentConfig, ids: list[str]) -> Iterator[EvalCase]:
    spacing = tuple(cfg.data.spacing) if cfg.data.spacing else None
    return load_eval_cases(eval_paths(cfg, ids), ids, cfg.data.num_classes, spacing)
