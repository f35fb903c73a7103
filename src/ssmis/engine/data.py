"""Glue from the experiment config to the data package: split, training stream, eval cases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ssmis.config import OWN_LAYOUTS, ExperimentConfig
from ssmis.data.augment import build_augmentation
from ssmis.data.datasets import (
    CaseDataset,
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
    brats_volume_path,
    check_h5_files,
    check_h5_values,
    la_volume_path,
)
from ssmis.data.owndata import CaseReader, Catalog, scan
from ssmis.data.sampler import RankShardSampler, TwoStreamBatchSampler
from ssmis.data.spacing import check_spacing_order, h5_image_shape
from ssmis.data.splits import Split, acdc_split, brats_split, la_split, split_from_catalog
from ssmis.errors import SSMISError


def own_catalog(cfg: ExperimentConfig) -> Catalog:
    return scan(cfg.data.layout, cfg.data.root, cfg.data)


def own_reader(cfg: ExperimentConfig, catalog: Catalog | None = None) -> CaseReader:
    """Reader of own data; 2D training on volumes slices along ``data.slice_axis``."""
    catalog = catalog if catalog is not None else own_catalog(cfg)
    axis = cfg.data.slice_axis if cfg.data.spatial_dims == 2 else None
    return CaseReader(catalog, cfg.data, slice_axis=axis)


def check_split_ids(catalog: Catalog, split: Split, source: str,
                    val_in_unlabeled: bool = False) -> None:
    """Every id of a given split exists; labeled, val and test cases have labels."""
    split.check_disjoint(val_in_unlabeled)
    for name in ("labeled", "unlabeled", "val", "test"):
        for case in getattr(split, name):
            if case not in catalog.cases:
                raise SSMISError(f"{source}: case '{case}' ({name}) is not in {catalog.root}")
            if name != "unlabeled" and catalog.cases[case].label is None:
                raise SSMISError(f"{source}: case '{case}' is in '{name}' but has no label")


def own_split(cfg: ExperimentConfig, catalog: Catalog | None = None) -> Split:
    d = cfg.data
    catalog = catalog if catalog is not None else own_catalog(cfg)
    if d.split_file is not None:
        split = Split.load(d.split_file)
        check_split_ids(catalog, split, str(d.split_file), d.val_pool == "unlabeled")
        return split
    return split_from_catalog(catalog, d)


def build_split(cfg: ExperimentConfig) -> Split:
    d = cfg.data
    if d.layout in OWN_LAYOUTS:
        return own_split(cfg)
    if d.split_file is not None:
        split = Split.load(d.split_file)
        split.check_disjoint()
        return split
    if d.layout == "acdc_h5":
        return acdc_split(d.root, labeled_patients=d.labeled_patients,
                          labeled_slices=d.labeled_slices)
    if d.layout == "brats_h5":
        return brats_split(d.root, labeled_count=d.labeled_count or 0)
    return la_split(d.root, labeled_count=d.labeled_count or 0, val_count=d.val_count or 0)


def _paths(cfg: ExperimentConfig, ids: list[str], acdc_path) -> list[Path]:
    root = cfg.data.root
    if cfg.data.layout == "acdc_h5":
        return [acdc_path(root, i) for i in ids]
    volume_path = brats_volume_path if cfg.data.layout == "brats_h5" else la_volume_path
    return [volume_path(root, i) for i in ids]


def train_paths(cfg: ExperimentConfig, ids: list[str]) -> list[Path]:
    """h5 files of training samples (ACDC: 2D slices; LA/BraTS: volumes)."""
    return _paths(cfg, ids, acdc_slice_path)


def eval_paths(cfg: ExperimentConfig, ids: list[str]) -> list[Path]:
    """h5 files of evaluation cases (ACDC: whole volumes; LA/BraTS: volumes)."""
    return _paths(cfg, ids, acdc_volume_path)


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
    if cfg.data.layout in OWN_LAYOUTS:
        _check_own_data(cfg, split, need_unlabeled)
        return
    groups = [(train_paths(cfg, split.labeled), True),
              (eval_paths(cfg, split.val), True), (eval_paths(cfg, split.test), True)]
    if need_unlabeled:
        groups.append((train_paths(cfg, split.unlabeled), False))
    for paths, with_label in groups:
        check_h5_files(paths, require_label=with_label)
    if cfg.data.spacing and cfg.data.spacing_check:
        first = eval_paths(cfg, split.val[:1])[0]
        check_spacing_order(cfg.data.spacing, h5_image_shape(first), str(first))
    for paths, with_label in groups:
        check_h5_values(paths, num_classes=cfg.data.num_classes, require_label=with_label)


def _check_own_data(cfg: ExperimentConfig, split: Split, need_unlabeled: bool) -> None:
    """Headers of every case first (channels, shapes, image/label agreement), then values."""
    reader = own_reader(cfg)
    groups = [(split.labeled, True), (split.val, True), (split.test, True)]
    if need_unlabeled:
        groups.append((split.unlabeled, False))
    for ids, with_label in groups:
        for case in ids:
            shape = reader.spatial_shape(case, with_label=with_label)
            if cfg.data.spatial_dims == 3 and len(shape) != 3:
                info = reader.catalog.get(case)
                raise SSMISError(f"{info.images[0]}: shape {tuple(shape)}, a 3D model "
                                 f"(data.patch_size {cfg.data.patch_size}) needs 3D volumes")
    if cfg.data.spacing and cfg.data.spacing_check:
        info = reader.catalog.get(split.val[0])
        check_spacing_order(cfg.data.spacing, reader.spatial_shape(split.val[0]),
                            str(info.images[0]))
    for ids, with_label in groups:
        for case in ids:
            reader.load_raw(case, with_label=with_label)


def _own_items(reader: CaseReader, ids: list[str], spatial_dims: int
               ) -> list[tuple[str, int | None]]:
    if spatial_dims == 3:
        return [(case, None) for case in ids]
    items: list[tuple[str, int | None]] = []
    for case in ids:
        if len(reader.spatial_shape(case)) == 2:
            items.append((case, None))
        else:
            items.extend((case, k) for k in range(reader.num_slices(case)))
    return items


def _train_transform(cfg: ExperimentConfig):
    """The training augmentation named by ``data.augmentation`` (ssl4mis | synfoc)."""
    return build_augmentation(cfg.data.augmentation, cfg.data.patch_size, cfg.data)


def train_batches(
    cfg: ExperimentConfig, split: Split, unlabeled_batch_size: int, start_batch: int,
    rank: int = 0, world_size: int = 1,
) -> Iterator[tuple[dict, dict | None]]:
    """Endless (labeled, unlabeled) batches starting at batch ``start_batch`` of the stream;
    with ``world_size`` > 1 this process's share of each global batch (:class:`RankShardSampler`).
    """
    d = cfg.data
    transform = _train_transform(cfg)
    unlabeled_ids = split.unlabeled if unlabeled_batch_size > 0 else []
    if d.layout in OWN_LAYOUTS:
        reader = own_reader(cfg)
        labeled = CaseDataset(reader, _own_items(reader, split.labeled, d.spatial_dims),
                              transform, with_label=True, cache=d.cache)
        unlabeled = CaseDataset(reader, _own_items(reader, unlabeled_ids, d.spatial_dims),
                                transform, with_label=False, cache=d.cache)
    else:
        dataset_cls = SliceDataset if d.spatial_dims == 2 else VolumePatchDataset
        extra = {"cache": d.cache} if d.spatial_dims == 2 else {}
        labeled = dataset_cls(train_paths(cfg, split.labeled), split.labeled, d.num_classes,
                              transform, with_label=True, **extra)
        unlabeled = dataset_cls(train_paths(cfg, unlabeled_ids), unlabeled_ids, d.num_classes,
                                transform, with_label=False, **extra)
    sampler = TwoStreamBatchSampler(
        len(labeled), len(unlabeled), cfg.train.batch_size, unlabeled_batch_size,
        seed=cfg.seed, start_batch=start_batch,
    )
    batch_sampler = (RankShardSampler(sampler, rank, world_size) if world_size > 1
                     else sampler)
    loader = DataLoader(
        TwoStreamDataset(labeled, unlabeled), batch_sampler=batch_sampler,
        collate_fn=collate_two_stream, num_workers=d.num_workers,
        pin_memory=torch.cuda.is_available(), persistent_workers=d.num_workers > 0,
    )
    return iter(loader)


def eval_cases(cfg: ExperimentConfig, ids: list[str]) -> Iterator[EvalCase]:
    if cfg.data.layout in OWN_LAYOUTS:
        return _own_eval_cases(own_reader(cfg), ids)
    spacing = tuple(cfg.data.spacing) if cfg.data.spacing else None
    return load_eval_cases(eval_paths(cfg, ids), ids, cfg.data.num_classes, spacing)


def _own_eval_cases(reader: CaseReader, ids: list[str]) -> Iterator[EvalCase]:
    """Whole cases, one at a time; single-channel images without their channel axis."""
    for case in ids:
        arrays = reader.load(case, with_label=True)
        assert arrays.label is not None
        image = arrays.image[0] if arrays.image.shape[0] == 1 else arrays.image
        yield EvalCase(case=case, image=image, label=arrays.label, spacing=arrays.spacing,
                       domain=arrays.domain)
