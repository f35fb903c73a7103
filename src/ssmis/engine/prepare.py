"""Everything a run needs, built and checked before its folder exists (:func:`prepare`).

Everything that can fail on the user's input (config, split, data files, method options) is
checked here, so a failed start writes nothing: the device, the threads, the method and its
batch rules, the data files, and the run's normalisation record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ssmis.config import ExperimentConfig
from ssmis.data.layouts import Layout
from ssmis.data.sampler import check_batch_split
from ssmis.data.splits import Split
from ssmis.engine import distributed as dist
from ssmis.engine.data import (
    build_layout,
    build_split,
    check_data,
    pin_run_normalisation,
    resolve_normalisation,
)
from ssmis.engine.fast import apply_speed_settings
from ssmis.engine.seed import seed_everything
from ssmis.engine.threads import ThreadChoice, apply_threads
from ssmis.errors import SSMISError
from ssmis.experiment import check_method
from ssmis.methods import Method, build_method
from ssmis.models import input_problem


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SSMISError("train.device: 'cuda' requested but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Prepared:
    """What :func:`prepare` validated: everything a run needs before touching the disk."""

    cfg: ExperimentConfig
    split: Split
    method: Method
    device: torch.device
    #: torch CPU threads set for the run and why (``train.threads`` or the automatic pick)
    threads: ThreadChoice | None = None
    #: lines the data checks want in the run log (e.g. labels resampled onto their image)
    data_notes: list[str] = field(default_factory=list)
    #: how the data are read: normalisation per channel, folder entries not read
    data_info: list[str] = field(default_factory=list)
    #: input batches in channels-last layout (``train.channels_last``)
    channels_last: bool = False
    #: the dataset's layout (``data.layout``), built once: listing, reading, evaluation cases
    layout: Layout | None = None


def prepare(cfg: ExperimentConfig, split: Split | None = None, from_run: bool = False
            ) -> Prepared:
    """Everything a run needs, checked before anything is written. Under DDP every process
    builds the same method (same seed); the data files are checked by rank 0 only.
    ``from_run``: the config was read back from a run folder (resume, evaluate): the data are
    read with the normalisation the run trained with, or refused when that cannot be."""
    threads = apply_threads(cfg.train.threads)
    device = dist.device_for(resolve_device(cfg.train.device))
    check_method(cfg, source="config")
    seed_everything(cfg.seed, cfg.train.deterministic)
    layout = build_layout(cfg)
    pinned: list[str] = []
    if from_run:
        cfg, layout, pinned = pin_run_normalisation(cfg, layout)
    split = split or build_split(cfg, layout)
    method = build_method(cfg)
    method.phases()  # phase lengths against train.iterations, before a run folder exists
    per_process = check_process_batch(cfg, method, dist.world_size())
    notes = dist.on_main(check_data, cfg, split, need_unlabeled=method.uses_unlabeled,
                         layout=layout) or []
    cfg, info = resolve_normalisation(cfg, layout, from_run)
    info = pinned + info
    if dist.use_sync_bn(cfg.train.sync_bn, device, sum(per_process), method):
        dist.convert_sync_bn(method)
    if dist.world_size() > 1:  # same initial weights everywhere, own random stream per process
        seed_everything(dist.rank_seed(cfg.seed, dist.rank()), cfg.train.deterministic)
    method = method.to(device)
    channels_last = apply_speed_settings(method, cfg.train, device, cfg.data.spatial_dims)
    return Prepared(cfg, split, method, device, threads=threads, data_notes=notes, data_info=info,
                    channels_last=channels_last, layout=layout)


def check_process_batch(cfg: ExperimentConfig, method: Method, world: int) -> tuple[int, int]:
    """(labeled, unlabeled) samples per process: the global ``train.batch_size`` /
    ``unlabeled_batch_size`` split over ``world`` processes. Refused (one line) when it does not
    divide, or when the per-process batch breaks the method's batch rule
    (:meth:`Method.batch_problem`, e.g. BCP's two equal halves)."""
    unlabeled = cfg.train.unlabeled_batch_size if method.uses_unlabeled else 0
    check_batch_split(cfg.train.batch_size, unlabeled, world)
    per = (cfg.train.batch_size // world, unlabeled // world)
    if world > 1:
        problem = method.batch_problem(*per) if method.uses_unlabeled else None
        if problem is None:
            problem = input_problem(cfg.model.name, cfg.model.options, cfg.data.patch_size,
                                    method.forward_batch(*per))
        if problem is not None:
            raise SSMISError(f"{problem} (per process: the global batch split over {world} "
                             "processes)")
    return per
