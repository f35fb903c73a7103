"""Glue from the experiment config to the data layout (:mod:`ssmis.data.layouts`): split,
checks, training stream and evaluation cases. The engine names no layout: it asks the one
``data.layout`` registers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ssmis.config import ExperimentConfig, device_augmentable
from ssmis.data.augment import build_augmentation
from ssmis.data.datasets import EvalCase, TwoStreamDataset, collate_two_stream
from ssmis.data.device_aug import DeviceBatchStream, SliceBank
from ssmis.data.layouts import CatalogLayout, Layout, get_layout
from ssmis.data.normalisation import ChannelNorm, describe_all
from ssmis.data.reader import CaseReader
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


def pin_run_normalisation(cfg: ExperimentConfig, layout: Layout
                          ) -> tuple[ExperimentConfig, Layout, list[str]]:
    """For a run read back from its folder (resume, evaluate) that records no normalisation (a
    run of ssmis before the record): when today's ``auto`` rule resolves its channels otherwise
    than the rule it trained with (:meth:`Layout.legacy_schemes`), the config with those
    schemes set explicitly, the layout built for it and a log line; else unchanged."""
    if cfg.data.resolved_normalization:
        return cfg, layout, []
    legacy = layout.legacy_schemes()
    current = [n.scheme for n in layout.normalisation()]
    if legacy is None or legacy == current:
        return cfg, layout, []
    data = cfg.data.model_copy(update={"normalization": legacy})
    cfg = cfg.model_copy(update={"data": data})
    return cfg, build_layout(cfg), [
        f"normalisation: the run records none (an older ssmis); it trained with {legacy} "
        f"(data.normalization auto as then resolved), today's rule gives {current}: kept "
        f"{legacy}"]


def resolve_normalisation(cfg: ExperimentConfig, layout: Layout, from_run: bool = False
                          ) -> tuple[ExperimentConfig, list[str]]:
    """The config with ``data.resolved_normalization`` set from the layout's records (written
    to the run's ``config.yaml``; ``ssmis predict`` applies it), and the run-log lines saying
    how each channel is normalised and which dataset entries are not read.

    Raises:
        SSMISError: ``from_run`` (resume, evaluate) and the run's record differs from what its
            data resolve to now (the dataset.json or the files changed since training).
    """
    norms = layout.normalisation()
    recorded = cfg.data.resolved_normalization
    if from_run and recorded:
        before = [ChannelNorm.from_dict(r).numbers() for r in recorded]
        if before != [n.numbers() for n in norms]:
            now = "; ".join(n.describe() for n in norms)
            raise SSMISError(
                f"data.resolved_normalization: the run trained with "
                f"{'; '.join(ChannelNorm.from_dict(r).describe() for r in recorded)}, its data "
                f"now resolve to {now}; restore the dataset (dataset.json, file types) or set "
                "data.normalization to the recorded scheme")
    data = cfg.data.model_copy(update={"resolved_normalization": [n.as_dict() for n in norms]})
    names = getattr(getattr(layout, "catalog", None), "channel_names", [])
    lines = [f"normalisation {line}" for line in describe_all(norms, names)]
    return cfg.model_copy(update={"data": data}), lines + layout.data_notes()


def _train_transform(cfg: ExperimentConfig) -> Any:
    """The training augmentation named by ``data.augmentation`` (ssl4mis | synfoc)."""
    return build_augmentation(cfg.data.augmentation, cfg.data.patch_size, cfg.data)


def _available_memory(device: torch.device) -> int:
    """Bytes free on ``device``: CUDA's free memory, or the host's available memory (Linux
    ``MemAvailable``; free pages elsewhere)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _estimated_bytes(dataset: Any, with_label: bool, probes: int = 8) -> int:
    """The bytes a :class:`SliceBank` of ``dataset`` will take, from up to ``probes`` items
    spread over it (float32 pixels, uint8 labels), before reading it all."""
    n = len(dataset)
    if n == 0:
        return 0
    picks = sorted({round(i * (n - 1) / max(probes - 1, 1)) for i in range(min(probes, n))})
    sizes = []
    for i in picks:
        image = dataset[(i, 0)]["image"]
        sizes.append(image.numel() * 4 + (image[0].numel() if with_label else 0))
    return int(sum(sizes) / len(sizes) * n)


def _size(nbytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 2**10:.1f} KiB"


def _device_stream(cfg: ExperimentConfig, layout: Layout, labeled_ids: list[str],
                   unlabeled_ids: list[str], sampler: Any,
                   device: torch.device) -> tuple[DeviceBatchStream | None, str]:
    """The on-device batch stream and the log line naming it, or (None, why not) when the
    DataLoader is used: on with ``data.on_device: true``; auto on a CUDA device, or on the CPU
    without loader workers (the loader would augment in this process anyway), when the slices
    take under a quarter of the free memory."""
    setting = cfg.data.on_device
    if setting is False:
        return None, "; data.on_device: false"
    if not device_augmentable(cfg.data):
        d = cfg.data
        why = ("3D patches" if len(d.patch_size) != 2 else "data.resize: false" if not d.resize
               else f"data.augmentation {d.augmentation}")
        return None, f"; data.on_device: auto, and {why} has no device form"
    if setting == "auto" and device.type != "cuda" and cfg.data.num_workers > 0:
        return None, "; data.on_device: auto leaves CPU runs with loader workers to them"
    labeled_set = layout.train_dataset(labeled_ids, None, with_label=True)
    unlabeled_set = (layout.train_dataset(unlabeled_ids, None, with_label=False)
                     if unlabeled_ids else None)
    if setting == "auto":
        need = _estimated_bytes(labeled_set, True) + (
            _estimated_bytes(unlabeled_set, False) if unlabeled_set is not None else 0)
        # the bank is read on the host first: it must fit there too
        places = [device] if device.type == "cpu" else [device, torch.device("cpu")]
        for place in places:
            free = _available_memory(place)
            if need > free // 4:
                where = "host memory" if place.type == "cpu" else str(place)
                return None, (f"; the training slices (about {_size(need)}) exceed a quarter "
                              f"of the {_size(free)} free in {where} (data.on_device: auto)")
    try:
        labeled = SliceBank(labeled_set, True, device)
        unlabeled = (SliceBank(unlabeled_set, False, device) if unlabeled_set is not None
                     else None)
    except SSMISError as err:
        if setting is True:
            raise
        return None, f"; {err} (data.on_device: auto)"
    nbytes = labeled.nbytes + (unlabeled.nbytes if unlabeled is not None else 0)
    unused = "; data.num_workers unused" if cfg.data.num_workers else ""
    note = (f"training batches: held and augmented on {device} ({len(labeled)} labeled + "
            f"{len(unlabeled) if unlabeled is not None else 0} unlabeled slices, "
            f"{_size(nbytes)}; data.on_device: {str(setting).lower()}{unused})")
    return DeviceBatchStream(labeled, unlabeled, sampler, cfg.data.patch_size), note


def train_batches(
    cfg: ExperimentConfig, split: Split, unlabeled_batch_size: int, start_batch: int,
    rank: int = 0, world_size: int = 1, layout: Layout | None = None,
    device: torch.device | None = None, log: Callable[[str], None] | None = None,
) -> Iterator[tuple[dict, dict | None]]:
    """Endless (labeled, unlabeled) batches starting at batch ``start_batch`` of the stream;
    with ``world_size`` > 1 this process's share of each global batch (:class:`RankShardSampler`).

    With ``device`` and ``data.on_device`` the slices are held on ``device`` and each batch is
    augmented there (:class:`ssmis.data.device_aug.DeviceBatchStream`, the same batches);
    otherwise a DataLoader augments on the CPU. ``log`` gets one line naming the route.
    """
    layout = layout or build_layout(cfg)
    log = log or (lambda _: None)
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
    why_not = ""
    if device is not None:
        stream, note = _device_stream(cfg, layout, split.labeled, unlabeled_ids, batch_sampler,
                                      device)
        if stream is not None:
            log(note)
            return stream
        why_not = note
    loader = DataLoader(
        TwoStreamDataset(labeled, unlabeled), batch_sampler=batch_sampler,
        collate_fn=collate_two_stream, num_workers=cfg.data.num_workers,
        pin_memory=torch.cuda.is_available(), persistent_workers=cfg.data.num_workers > 0,
    )
    workers = cfg.data.num_workers
    log(f"training batches: a DataLoader, augmented on the CPU ({workers} "
        f"worker{'' if workers == 1 else 's'}){why_not}")
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
