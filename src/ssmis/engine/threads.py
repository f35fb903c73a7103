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
lowered to the CPUs of the affinity mask left idle by other work *now*: two reads of
``/proc/stat`` :data:`SAMPLE_S` seconds apart, never below 1. It never raises a thread count the
process already lowered (``OMP_NUM_THREADS``, ``torch.set_num_threads``).

The 1-minute load average, used before, lags: right after one job ends on an idle 2-core
machine it still reads about 1, and the next run picked 1 thread and trained at half speed.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_STAT = Path("/proc/stat")
SAMPLE_S = 0.2  # seconds between the two reads of /proc/stat


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


def _cpu_ticks(stat: Path) -> dict[str, tuple[int, int]]:
    """``{'cpu': (busy, total), 'cpu0': ..., ...}`` in clock ticks since boot from a
    ``/proc/stat`` file: idle is its ``idle`` + ``iowait`` columns, total the first eight
    (user nice system idle iowait irq softirq steal; guest time is already in user).
    Raises OSError or ValueError when the file is missing or malformed."""
    ticks: dict[str, tuple[int, int]] = {}
    for line in stat.read_text().splitlines():
        fields = line.split()
        if not fields or not fields[0].startswith("cpu"):
            continue
        values = [int(v) for v in fields[1:9]]
        if len(values) < 4:
            raise ValueError(f"{stat}: short line {line!r}")
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        ticks[fields[0]] = (sum(values) - idle, sum(values))
    if "cpu" not in ticks:
        raise ValueError(f"{stat}: no 'cpu' line")
    return ticks


def idle_cpus(cpus: set[int] | None = None, stat: Path | None = None,
              interval: float = SAMPLE_S, wait: Callable[[float], None] | None = None
              ) -> float | None:
    """CPUs left idle by all work on the machine over the next ``interval`` seconds: two reads
    of ``stat`` (``/proc/stat``) around ``wait(interval)`` (``time.sleep``). Counted over the
    CPUs ``cpus`` (the affinity mask) when the file lists them one per line, else over the machine
    (``os.cpu_count()`` times the idle share of the ``cpu`` line). None when the file cannot
    be read (not Linux) or no tick passed; this process sleeps meanwhile, so it is not counted."""
    stat = PROC_STAT if stat is None else stat
    wait = time.sleep if wait is None else wait
    try:
        before = _cpu_ticks(stat)
        wait(interval)
        after = _cpu_ticks(stat)
    except (OSError, ValueError):
        return None
    names = [f"cpu{c}" for c in sorted(cpus or ())]
    if not names or not all(n in before and n in after for n in names):
        names, scale = ["cpu"], float(os.cpu_count() or 1)
    else:
        scale = 1.0
    idle, passed = 0.0, False
    for name in names:
        busy = after[name][0] - before[name][0]
        total = after[name][1] - before[name][1]
        if total > 0:
            idle += scale * (1.0 - min(max(busy / total, 0.0), 1.0))
            passed = True
        elif name != "cpu":
            idle += 1.0  # no tick on this CPU: nothing ran there
    return idle if passed else None


def _affinity() -> set[int] | None:
    """The CPU numbers of this process's affinity mask, or None (not Linux)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def pick_threads() -> ThreadChoice:
    """The automatic thread count (see the module docstring) and the reason, e.g.
    ``'2 usable CPUs, 0.8 idle now (/proc/stat over 0.2 s)'``. Takes :data:`SAMPLE_S`
    seconds (the idle sample)."""
    cpus = usable_cpus()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    threads = max(1, cpus // local)
    reason = f"{cpus} usable CPU{'s' * (cpus != 1)}"
    if local > 1:
        reason += f" shared by {local} processes of this job"
    idle = idle_cpus(_affinity())
    if idle is None:
        reason += ", idle CPUs not measured (/proc/stat unreadable or unchanged)"
    else:
        free = max(1, int(idle + 0.5))
        reason += f", {max(idle, 0):.1f} idle now (/proc/stat over {SAMPLE_S:g} s)"
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
