"""``ssmis sweep``: a grid of runs (configs x methods x seeds x labeled counts), run to the end.

Every job is one run folder. Its state is read from the folder, so a sweep can be stopped at
any time (Ctrl-C, a killed machine, a SLURM time limit) and started again with the same
command: finished runs are skipped, unfinished ones continue from their last checkpoint as
``ssmis train --resume`` does (same data stream and random state), runs killed before their
first checkpoint start again.

Each job runs in its own process (``python -m ssmis.reproduce.sweep run-job SPEC INDEX``,
which trains through :mod:`ssmis.engine.run` as ``ssmis train`` does), so one crash does not
end the sweep; its output goes to
``OUT/logs/<job>.log``. Parallelism: one slot per CPU worker (``--workers``, threads split
evenly), or ``--per-gpu K`` slots on each visible GPU (``CUDA_VISIBLE_DEVICES`` set per job).
``--emit slurm`` writes a job-array script that runs the same per-job command instead.

A job is finished when its done-files exist: ``metrics.json`` (a plain sweep), or the
``protocol_<name>.json`` files of :mod:`ssmis.reproduce.protocols` (a reproduction).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ssmis.atomic import write_json, write_text
from ssmis.engine.runfolder import (
    CONFIG_FILE,
    METRICS_FILE,
    clear_run_files,
    has_resumable,
)
from ssmis.errors import SSMISError
from ssmis.exits import exit_status

__all__ = [
    "Job",
    "Slot",
    "emit_slurm",
    "expand_grid",
    "job_state",
    "labeled_key",
    "make_slots",
    "run_jobs",
    "write_spec",
]

SPEC_FILE = "sweep_jobs.json"


@dataclass
class Job:
    """One run of a sweep.

    ``config`` is an experiment YAML, ``overrides`` its ``key=value`` overrides, ``run_dir``
    the run folder (absolute), ``post`` what runs after training (``"protocols"``: the two
    protocols of :mod:`ssmis.reproduce.protocols` after the final test evaluation),
    ``info`` free labels (method, seed, labeled, ...) used in reports.
    """

    key: str
    config: str
    overrides: list[str]
    run_dir: str
    post: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.run_dir)

    def done_files(self) -> list[Path]:
        if self.post == "protocols":
            from ssmis.reproduce.protocols import protocol_files

            return list(protocol_files(self.path).values())
        return [self.path / METRICS_FILE]

    def dice(self) -> float | None:
        """The finished run's mean test Dice (honest protocol for reproductions), or None."""
        file = self.done_files()[0]
        try:
            value = json.loads(file.read_text())["mean"]["dice"]["mean"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError):
            return None
        return float(value) if value is not None else None


def labeled_key(layout: str) -> str:
    """The config key of 'how many labeled cases' for a layout (ACDC counts patients), as the
    registered layout declares it (:attr:`ssmis.data.layouts.Layout.labeled_key`)."""
    from ssmis.data.layouts import LAYOUTS

    cls = LAYOUTS.get(layout)
    return cls.labeled_key if cls is not None else "data.labeled_count"


def method_config(config: Path, method: str) -> Path:
    """The config of ``method`` beside ``config``: same folder, the method's name in place of
    the config's method name (``acdc/supervised_cpu.yaml`` + cvbm -> ``acdc/cvbm_cpu.yaml``)."""
    from ssmis.config import read_yaml

    own = str((read_yaml(config).get("method") or {}).get("name") or "supervised")
    if own == method:
        return config
    stem = config.stem
    suffix = stem[len(own):] if stem.startswith(own) else ""
    candidate = config.with_name(f"{method}{suffix}{config.suffix}")
    if not candidate.is_file():
        raise SSMISError(f"--methods {method}: no config for it beside {config} (expected "
                         f"{candidate})")
    return candidate


def seed_list(seeds: str | int, base: int) -> list[int]:
    """``--seeds``: a count N (``base``, ``base + 1``, ... ``base + N - 1``) or a list
    ``1,2,3``; SSMISError on anything else or a repeated seed."""
    text = str(seeds).strip()
    try:
        if "," in text:
            values = [int(s) for s in text.split(",") if s.strip()]
        else:
            n = int(text)
            if n < 1:
                raise SSMISError(f"--seeds {n}: expected >= 1")
            values = [base + i for i in range(n)]
    except ValueError:
        raise SSMISError(f"--seeds {text}: expected a count (3) or a list (1,2,3)") from None
    if len(set(values)) != len(values):
        raise SSMISError(f"--seeds {text}: a seed repeats")
    return values


def expand_grid(configs: Sequence[Path], out: Path, methods: Sequence[str] | None = None,
                seeds: str | None = None, labeled: Sequence[int] | None = None,
                overrides: Sequence[str] = ()) -> list[Job]:
    """The jobs of a grid; run folders ``OUT/<config name>[-l<N>]/<method>/seed<S>``.

    ``seeds``: None = each config's own seed, else :func:`seed_list` counted from it. Every
    job's config is loaded and validated here (unknown key, bad value, missing data folder),
    before anything is written.
    """
    from ssmis.config import read_yaml
    from ssmis.experiment import check_method, load_config

    jobs: list[Job] = []
    for config in configs:
        config = Path(config)
        for method in methods or [None]:
            path = method_config(config, method) if method else config
            raw = read_yaml(path)
            layout = str((raw.get("data") or {}).get("layout"))
            for n in labeled or [None]:
                extra = list(overrides) + ([f"{labeled_key(layout)}={n}"] if n else [])
                base = load_config(path, extra)
                check_method(base, str(path))
                for seed in seed_list(seeds, base.seed) if seeds else [base.seed]:
                    name = base.name + (f"-l{n}" if n else "")
                    run = out / name / base.method.name / f"seed{seed}"
                    jobs.append(Job(
                        key=f"{name}/{base.method.name}/seed{seed}", config=str(path.resolve()),
                        overrides=[*extra, f"seed={seed}"], run_dir=str(run.resolve()),
                        info={"config": str(path), "method": base.method.name, "seed": seed,
                              "labeled": n, "name": name}))
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise SSMISError(f"sweep: two jobs share the run folder {dup} (two configs with the "
                         "same name?)")
    return jobs


# ------------------------------------------------------------------------------ job state

def _config_differences(job: Job) -> str | None:
    """The first key where the run folder's config differs from the job's, or None."""
    from ssmis.config import RECORD_FIELDS, read_yaml
    from ssmis.experiment import load_config

    stored = read_yaml(job.path / CONFIG_FILE)
    from ssmis.methods import declared_params

    cfg = load_config(Path(job.config), job.overrides)
    wanted = cfg.model_dump(mode="json")
    wanted["method"]["params"] = declared_params(cfg)  # config.yaml records every default

    def walk(a: Any, b: Any, prefix: str) -> str | None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(a):  # keys a newer ssmis added (with defaults) are not differences
                if (prefix == "" and k == "output_dir") or f"{prefix}{k}" in RECORD_FIELDS:
                    continue
                found = walk(a.get(k), b.get(k), f"{prefix}{k}.")
                if found:
                    return found
            return None
        if prefix.startswith("data.root") or prefix.endswith("split_file."):
            a, b = str(Path(str(a)).resolve()), str(Path(str(b)).resolve())
        return None if a == b else f"{prefix[:-1]}: run has {a!r}, the sweep asks {b!r}"

    return walk(stored, wanted, "")


def check_recorded_config(job: Job) -> None:
    """SSMISError (one line naming the run folder and the first differing field) when the
    folder's recorded ``config.yaml`` is not the config the grid asks for (another
    ``--iterations``, ``--set train.lr=...``, method parameter, data, seed...), or when a
    finished run has no ``config.yaml`` to compare."""
    if not (job.path / CONFIG_FILE).is_file():
        raise SSMISError(f"{job.path}: holds a finished run without config.yaml, so it cannot "
                         "be checked against the grid; choose another --out")
    diff = _config_differences(job)
    if diff:
        raise SSMISError(f"{job.path}: holds a run with another config ({diff}); choose "
                         "another --out")


def job_state(job: Job, check_config: bool = True) -> str:
    """``done`` | ``resume`` (a checkpoint to continue from) | ``fresh`` (nothing usable).

    A finished or resumable run is reused only when its recorded config equals the job's
    (:func:`check_recorded_config`; SSMISError otherwise): a folder of runs with another
    budget or other overrides is never counted as done, resumed or overwritten.
    """
    if all(f.is_file() for f in job.done_files()):
        if check_config:
            check_recorded_config(job)
        return "done"
    if has_resumable(job.path):
        if check_config and (job.path / CONFIG_FILE).is_file():
            check_recorded_config(job)
        return "resume"
    return "fresh"


def run_job(job: Job) -> int:
    """Train (fresh or resumed) and finish one job, in this process; the exit status that
    ``ssmis train`` would give (0, 2 with one ``ssmis: error:`` line on stderr, 128 + signal
    for an interrupted run: :mod:`ssmis.exits`).

    The run folder's lock (:mod:`ssmis.engine.runlock`) is held throughout, so a second sweep
    over the same folder stops with one line instead of clearing or resuming a live run.
    """
    from ssmis.engine.run import resume_run, train_config
    from ssmis.engine.runlock import run_lock

    try:
        with run_lock(job.path):
            state = job_state(job)
            if state == "done":
                return 0
            # the final test evaluation always runs: a reproduction's run folder is a normal one
            # (metrics.json, curves, overlays) that `ssmis compare` and `ssmis evaluate` read
            if state == "resume":
                resume_run(job.path, verbose=False)
            else:  # killed before its first checkpoint: nothing to continue from
                clear_run_files(job.path)
                train_config(Path(job.config), job.overrides, job.path, verbose=False)
            if job.post:
                from ssmis.reproduce.protocols import evaluate_protocols

                evaluate_protocols(job.path)
    except (Exception, KeyboardInterrupt) as err:
        status = exit_status(err)
        if status is None:
            raise
        return status
    return 0


def write_spec(jobs: Sequence[Job], out: Path) -> Path:
    """``OUT/sweep_jobs.json``: the jobs, read by ``run-job`` (locally and under SLURM)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / SPEC_FILE
    return write_json(path, {"schema": "ssmis-sweep-1", "cwd": os.getcwd(),
                             "jobs": [asdict(j) for j in jobs]}, indent=1)


def read_spec(path: Path) -> list[Job]:
    try:
        data = json.loads(Path(path).read_text())
        return [Job(**j) for j in data["jobs"]]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise SSMISError(f"{path}: not a sweep job file ({err})") from None


# ------------------------------------------------------------------------------ slots

@dataclass(frozen=True)
class Slot:
    """Where one job runs: environment additions (GPU id or CPU thread count) and a label."""

    label: str
    env: dict[str, str]


def visible_gpus() -> list[str]:
    """Ids of the visible CUDA devices (as CUDA_VISIBLE_DEVICES names them)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    named = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return named[:count] if len(named) >= count else [str(i) for i in range(count)]


def make_slots(device: str = "auto", workers: int | None = None, per_gpu: int = 1) -> list[Slot]:
    """``per_gpu`` slots per visible GPU (device auto/cuda), else ``workers`` CPU slots
    (default 1) with the CPU threads split evenly between them."""
    if per_gpu < 1:
        raise SSMISError(f"--per-gpu {per_gpu}: expected >= 1")
    gpus = visible_gpus() if device in ("auto", "cuda") else []
    if device == "cuda" and not gpus:
        raise SSMISError("--device cuda: no CUDA device is visible")
    if gpus:
        return [Slot(f"gpu{g}" + (f".{k}" if per_gpu > 1 else ""),
                     {"CUDA_VISIBLE_DEVICES": g})
                for g in gpus for k in range(per_gpu)]
    n = workers or 1
    if n < 1:
        raise SSMISError(f"--workers {n}: expected >= 1")
    threads = str(max((os.cpu_count() or 1) // n, 1))
    return [Slot(f"cpu{k}", {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads,
                             "MKL_NUM_THREADS": threads}) for k in range(n)]


# ------------------------------------------------------------------------------ running

def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("ssmis: error:")]
    return (errors or lines or [""])[-1][:200]


@dataclass
class SweepOutcome:
    """What a sweep did: jobs skipped (already finished), finished now, failed (with logs)."""

    skipped: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    wall_s: float = 0.0


def run_jobs(jobs: Sequence[Job], out: Path, slots: Sequence[Slot],
             echo: Callable[[str], None] = print) -> SweepOutcome:
    """Run every unfinished job on the slots; one line per finished job (Dice, time, ETA)."""
    outcome = SweepOutcome()
    todo: list[int] = []
    for i, job in enumerate(jobs):
        if job_state(job) == "done":
            outcome.skipped.append(job.key)
        else:
            todo.append(i)
    if outcome.skipped:
        echo(f"{len(outcome.skipped)} of {len(jobs)} runs already finished (skipped)")
    if not todo:
        return outcome
    spec = write_spec(jobs, out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending: queue.Queue[int] = queue.Queue()
    for i in todo:
        pending.put(i)
    lock = threading.Lock()
    started: list[str] = []
    durations: list[float] = []
    t0 = time.perf_counter()
    echo(f"{len(todo)} runs to do on {len(slots)} slot(s): "
         f"{', '.join(s.label for s in slots)}; logs in {logs}")

    def worker(slot: Slot) -> None:
        while True:
            try:
                i = pending.get_nowait()
            except queue.Empty:
                return
            job = jobs[i]
            resumed = job_state(job, check_config=False) == "resume"
            log = logs / (job.key.replace("/", "__") + ".log")
            env = {**os.environ, **slot.env}
            with lock:  # progress from the first run, not only when one finishes
                started.append(job.key)
                echo(f"[{len(started)}/{len(todo)}] {job.key}: "
                     f"{'resuming' if resumed else 'started'} on {slot.label} (log: {log})")
            start = time.perf_counter()
            with log.open("a") as handle:
                handle.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} on {slot.label}"
                             f"{' (resume)' if resumed else ''}\n")
                handle.flush()
                rc = subprocess.call([sys.executable, "-m", "ssmis.reproduce.sweep", "run-job",
                                      str(spec), str(i)], env=env, stdout=handle,
                                     stderr=subprocess.STDOUT)
            took = time.perf_counter() - start
            with lock:
                done_n = len(outcome.finished) + len(outcome.failed) + 1
                tag = f"[{done_n}/{len(todo)}] {job.key}"
                if rc == 0:
                    outcome.finished.append(job.key)
                    durations.append(took)
                    dice = job.dice()
                    shown = f"Dice {dice * 100:.2f}%" if dice is not None else "Dice n/a"
                    left = len(todo) - done_n
                    eta = (_duration(sum(durations) / len(durations) * left / len(slots))
                           if left else "0m00s")
                    echo(f"{tag}: {shown}{' (resumed)' if resumed else ''} in "
                         f"{_duration(took)}; ETA {eta}")
                else:
                    outcome.failed.append((job.key, str(log)))
                    echo(f"{tag}: FAILED (exit {rc}): {_last_line(log)} [log: {log}]")

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in slots]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    outcome.wall_s = time.perf_counter() - t0
    return outcome


def emit_slurm(jobs: Sequence[Job], out: Path, per_task_gpus: int = 1,
               cpus_per_task: int = 8, time_limit: str = "24:00:00",
               max_parallel: int | None = None) -> Path:
    """Write ``OUT/sweep_jobs.json`` and ``OUT/sweep.slurm``, a job array (one task per job)
    running the same idempotent per-job command as a local sweep; resubmitting it continues
    unfinished runs and skips finished ones. Returns the script's path."""
    spec = write_spec(jobs, out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    limit = f"%{max_parallel}" if max_parallel else ""
    lines = [
        "#!/bin/bash",
        f"# ssmis sweep: {len(jobs)} runs, one array task each; written by `ssmis sweep --emit "
        "slurm`. Submit with: sbatch " + str(out / "sweep.slurm"),
        "# Resubmitting after a time limit or a failure skips finished runs and resumes the",
        "# others from their last checkpoint.",
        "#SBATCH --job-name=ssmis-sweep",
        f"#SBATCH --array=0-{len(jobs) - 1}{limit}",
        f"#SBATCH --gres=gpu:{per_task_gpus}",
        f"#SBATCH --cpus-per-task={cpus_per_task}",
        f"#SBATCH --time={time_limit}",
        f"#SBATCH --output={logs.resolve()}/slurm-%A_%a.out",
        "set -euo pipefail",
        f"cd {Path.cwd()}",
        f"{sys.executable} -m ssmis.reproduce.sweep run-job {spec.resolve()} "
        '"$SLURM_ARRAY_TASK_ID"',
    ]
    script = out / "sweep.slurm"
    write_text(script, "\n".join(lines) + "\n")
    script.chmod(0o755)
    return script


def _main(argv: Sequence[str]) -> int:
    """``python -m ssmis.reproduce.sweep run-job SPEC INDEX``: run one job of a spec file."""
    if len(argv) != 3 or argv[0] != "run-job":
        print("usage: python -m ssmis.reproduce.sweep run-job SWEEP_JOBS.json INDEX",
              file=sys.stderr)
        return 2
    try:
        jobs = read_spec(Path(argv[1]))
        index = int(argv[2])
        if not 0 <= index < len(jobs):
            raise SSMISError(f"{argv[1]}: job index {index} outside 0..{len(jobs) - 1}")
        return run_job(jobs[index])
    except SSMISError as err:
        print(f"ssmis: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
