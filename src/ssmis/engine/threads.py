"""How many CPU threads torch uses: ``train.threads``, or a count picked from the CPUs this
process may really use.

PyTorch's default is one OpenMP thread per core of the machine. On a shared or containerised
machine that is often more threads than CPUs the process gets: the OpenMP threads then wait on
each other and training slows down by an order of magnitude (measured on a busy 2-core machine:
0.25 it/s with the default, 6.3 it/s with one thread). The automatic pick takes the smallest of

* the CPUs in the process's affinity mask (``taskset``, SLURM ``--cpus-per-task``, ...);
* the cgroup CPU quota, rounded up (Docker ``--cpus``, Kubernetes limits; cgroup v2
  ``cpu.max`` or v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``);

divided by the processes of this job on the machine (torchrun's ``LOCAL_WORLD_SIZE``), and
lowered to the CPUs left idle by other work (the CPUs of the machine minus its 1-minute load
average), never below 1. It never raises a thread count the process already lowered
(``OMP_NUM_THREADS``, ``torch.set_num_threads``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count set and why (one line for the run log)."""

    threads: int
    reason: str


def cgroup_cpu_limit(root: Path | None = None, proc_cgroup: Path | None = None
                     ) -> float | None:
    """CPUs granted by the cgroup quota (e.g. 1.5 for ``150000 100000``), or None (no limit,
    or no cgroup file readable). cgroup v2: the smallest ``cpu.max`` of the process's cgroup
    and its parents under ``root``; v1: ``cpu/cpu.cfs_quota_us`` / ``cpu.cfs_period_us``."""
    root = CGROUP_ROOT if root is None else root
    proc_cgroup = PROC_CGROUP if proc_cgroup is None else proc_cgroup
    limits: list[float] = []
    for folder in _v2_folders(root, proc_cgroup):
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota != "max" and float(period) > 0:
            limits.append(float(quota) / float(period))
    for v1 in ("cpu", "cpu,cpuacct"):
        try:
            quota_us = float((root / v1 / "cpu.cfs_quota_us").read_text())
            period_us = float((root / v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota_us > 0 and period_us > 0:
            limits.append(quota_us / period_us)
    return min(limits) if limits else None


def _v2_folders(root: Path, proc_cgroup: Path) -> list[Path]:
    """``root`` and the folders down to this process's own cgroup (v2 ``0::/path`` line)."""
    folders = [root]
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return folders
    for line in lines:
        if line.startswith("0::"):
            parts = [p for p in line[3:].strip().split("/") if p]
            for k in range(1, len(parts) + 1):
                folders.append(root.joinpath(*parts[:k]))
    return folders


def usable_cpus() -> int:
    """CPUs this process may run on: the affinity mask, capped by the cgroup quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit - 1e-9)))
    return max(1, cpus)


def idle_cpus() -> float | None:
    """CPUs of the machine left idle by all work on it (1-minute load average), or None."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    return (os.cpu_count() or 1) - load


def pick_threads() -> ThreadChoice:
    """The automatic thread count (see the module docstring) and the reason, e.g.
    ``'2 usable CPUs, 1 process of this job, 0.8 idle (load 1.2)'``."""
    cpus = usable_cpus()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    threads = max(1, cpus // local)
    reason = f"{cpus} usable CPU{'s' * (cpus != 1)}"
    if local > 1:
        reason += f" shared by {local} processes of this job"
    idle = idle_cpus()
    if idle is not None:
        free = max(1, int(idle + 0.5))
        reason += f", {max(idle, 0):.1f} idle (load {(os.cpu_count() or 1) - idle:.1f})"
        threads = min(threads, free)
    current = torch.get_num_threads()
    if current < threads:
        reason += f", kept at {current} set before (OMP_NUM_THREADS / torch.set_num_threads)"
        threads = current
    return ThreadChoice(threads, reason)


def apply_threads(requested: int | None) -> ThreadChoice:
    """Set torch's intra-op thread count: ``requested`` (``train.threads``) when given, else
    :func:`pick_threads`. Returns the count set and why."""
    choice = (ThreadChoice(requested, "train.threads") if requested
              else pick_threads())
    torch.set_num_threads(choice.threads)
    return choice
