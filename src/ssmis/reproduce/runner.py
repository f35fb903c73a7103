"""``ssmis reproduce TABLE``: a published table's grid, run through the sweep, then the report.

The grid is (labeled setting x ssmis method x seed) for the table's rows that ssmis can rerun.
Each method uses its config in ``CONFIGS/<table.config_dir>/``: ``<method>.yaml`` (the
published recipe) for the ``paper`` and ``short`` budgets, ``<method>_cpu.yaml`` for ``cpu``
(the paper config shrunk when there is none). ``short`` is a tenth of the paper's iterations;
``--iterations N`` sets the total. Every iteration-counted method parameter (pre-training
length, ramp-ups) is scaled with the run, and validation stays at most 50 times per run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ssmis.errors import SSMISError
from ssmis.reproduce.published import PublishedTable, Setting
from ssmis.reproduce.sweep import Job, seed_list

__all__ = ["BUDGETS", "Budget", "Plan", "budget_for", "plan_reproduction"]

BUDGETS = ("paper", "short", "cpu")
#: Method parameters counted in iterations, scaled with ``train.iterations``.
_ITERATION_PARAMS = ("pretrain_iterations", "rampup_iters_per_epoch", "rampup_iterations",
                     "threshold_rampup", "consistency_start")
_MAX_VALIDATIONS = 50


@dataclass
class Budget:
    """How one method's run is scaled: its config file, the overrides, and a description."""

    config: Path
    overrides: list[str]
    iterations: int
    patch: list[int]
    paper_iterations: int | None
    paper_patch: list[int] | None


def _scaled(value: int, factor: float, low: int = 1) -> int:
    return max(int(round(value * factor)), low)


def budget_for(config_dir: Path, method: str, budget: str,
               iterations: int | None = None) -> Budget:
    """The config and overrides of ``method`` under ``budget`` (see the module docstring).

    SSMISError when the method has no config in ``config_dir``.
    """
    from ssmis.config import read_yaml

    if budget not in BUDGETS:
        raise SSMISError(f"--budget {budget}: expected one of {', '.join(BUDGETS)}")
    paper_cfg = config_dir / f"{method}.yaml"
    cpu_cfg = config_dir / f"{method}_cpu.yaml"
    if budget == "cpu" and cpu_cfg.is_file():
        path, factor, shrink = cpu_cfg, 1.0, False
    elif paper_cfg.is_file():
        path, factor, shrink = paper_cfg, {"paper": 1.0, "short": 0.1, "cpu": 1 / 40}[budget], \
            budget == "cpu"
    else:
        raise SSMISError(f"{config_dir}: no config for method '{method}' (expected "
                         f"{paper_cfg.name}{' or ' + cpu_cfg.name if budget == 'cpu' else ''})")
    raw = read_yaml(path)
    train = raw.get("train") or {}
    data = raw.get("data") or {}
    params = (raw.get("method") or {}).get("params") or {}
    total = int(train.get("iterations", 1))
    if iterations is not None:
        if iterations < 2:
            raise SSMISError(f"--iterations {iterations}: expected >= 2")
        factor = iterations / total
    new_total = max(int(round(total * factor)), 2)
    factor = new_total / total
    patch = [int(p) for p in data.get("patch_size") or []]
    overrides: list[str] = []
    if new_total != total:
        overrides.append(f"train.iterations={new_total}")
    val_every = _scaled(int(train.get("val_every", 200)), factor)
    val_every = max(val_every, math.ceil(new_total / _MAX_VALIDATIONS))
    if val_every != train.get("val_every"):
        overrides.append(f"train.val_every={val_every}")
    if train.get("log_every", 1) > new_total:
        overrides.append("train.log_every=1")
    for name in _ITERATION_PARAMS:
        value = params.get(name)
        if isinstance(value, int) and value > 0 and factor != 1.0:
            scaled = _scaled(value, factor)
            if name == "pretrain_iterations":
                scaled = min(scaled, new_total - 1)
            overrides.append(f"method.params.{name}={scaled}")
            ramp = params.get("consistency_rampup")
            if name == "rampup_iters_per_epoch" and value * factor < 0.5 and ramp:
                # one iteration per ramp "epoch" is the floor: shorten the ramp instead
                overrides.append(f"method.params.consistency_rampup="
                                 f"{float(ramp) * value * factor:.4g}")
    if shrink and patch:
        patch = [max(16, (p // 2) // 16 * 16) for p in patch]
        overrides.append(f"data.patch_size={patch}")
    paper_iterations = paper_patch = None
    if paper_cfg.is_file():
        p = read_yaml(paper_cfg)
        paper_iterations = int((p.get("train") or {}).get("iterations", 0)) or None
        paper_patch = [int(v) for v in (p.get("data") or {}).get("patch_size") or []] or None
    return Budget(path, overrides, new_total, patch, paper_iterations, paper_patch)


@dataclass
class Plan:
    """A reproduction: the table, the chosen settings/methods/seeds, the jobs and budgets."""

    table: PublishedTable
    settings: list[Setting]
    methods: dict[str, list[str]]  # setting key -> ssmis methods run
    skipped: dict[str, list[str]]  # setting key -> "method: reason"
    seeds: list[int]
    budget: str
    protocol: str
    jobs: list[Job]
    budgets: dict[str, Budget]  # method -> budget
    out: Path
    started: float = field(default_factory=time.time)


def default_out(table: PublishedTable, budget: str, budgets: dict[str, Budget]) -> Path:
    """``reproduce/<table>-<budget>-<N>it``: the default folder names the budget and the run
    length (``<min>-<max>it`` when the methods' lengths differ), so that reproductions with
    another ``--budget`` or ``--iterations`` never share a folder."""
    lengths = sorted({b.iterations for b in budgets.values()})
    length = f"{lengths[0]}" if len(lengths) == 1 else f"{lengths[0]}-{lengths[-1]}"
    return Path("reproduce") / f"{table.id}-{budget}-{length}it"


def plan_reproduction(table: PublishedTable, out: Path | None, configs: Path,
                      methods: Sequence[str] | None = None,
                      labeled: Sequence[str] | None = None, seeds: str | int = 3,
                      budget: str = "cpu", iterations: int | None = None,
                      protocol: str = "honest", data_root: Path | None = None,
                      extra_overrides: Sequence[str] = ()) -> Plan:
    """Everything a reproduction will run, validated before anything is written.

    ``out`` None: :func:`default_out`.
    SSMISError: the table is not runnable (its reason), an unknown setting or method, a
    method without a config, a config that does not validate.
    """
    from ssmis.config import read_yaml
    from ssmis.experiment import check_method, load_config
    from ssmis.reproduce.protocols import protocol_overrides

    if not table.runnable:
        raise SSMISError(f"TABLE {table.id}: not runnable: {table.not_runnable_reason}")
    protocol_overrides(protocol)  # validates the name
    assert table.config_dir and table.labeled_key
    config_dir = configs / table.config_dir
    if not config_dir.is_dir():
        raise SSMISError(f"--configs {configs}: no folder {table.config_dir}/ for table "
                         f"{table.id} (run from the ssmis repository or pass --configs)")
    settings = [table.setting(k) for k in labeled] if labeled else list(table.settings)
    known = {r.ssmis for s in table.settings for r in s.rows if r.ssmis}
    for m in methods or []:
        if m not in known:
            raise SSMISError(f"--methods {m}: table {table.id} has no row for it; its ssmis "
                             f"methods are {', '.join(sorted(known))}")
    chosen: dict[str, list[str]] = {}
    skipped: dict[str, list[str]] = {}
    budgets: dict[str, Budget] = {}
    grid: list[tuple[str, str, int, list[str]]] = []  # setting, method, seed, overrides
    honest = protocol_overrides("honest")
    seed_values: list[int] | None = None
    for s in settings:
        wanted = [m for m in table.ssmis_methods(s) if not methods or m in methods]
        chosen[s.key], skipped[s.key] = [], []
        for m in wanted:
            try:
                b = budgets.get(m) or budget_for(config_dir, m, budget, iterations)
            except SSMISError as err:
                if methods:  # asked for by name: an error
                    raise
                skipped[s.key].append(f"{m}: {err}")
                continue
            budgets[m] = b
            overrides = [*b.overrides, f"{table.labeled_key}={s.labeled}", *honest,
                         *extra_overrides]
            if data_root is not None:
                overrides.append(f"data.root={data_root}")
            cfg = load_config(b.config, overrides)
            check_method(cfg, str(b.config))
            if seed_values is None:
                seed_values = seed_list(seeds, int(read_yaml(b.config).get("seed", 0) or 0))
            chosen[s.key].append(m)
            grid.extend((s.key, m, seed, overrides) for seed in seed_values)
    if out is None and budgets:
        out = default_out(table, budget, budgets)
    jobs = [Job(key=f"labeled-{key}/{m}/seed{seed}", config=str(budgets[m].config.resolve()),
                overrides=[*overrides, f"seed={seed}", f"name={table.id}-l{key}-{m}"],
                run_dir=str((Path(out or ".") / "runs" / f"labeled-{key}" / m / f"seed{seed}")
                            .resolve()),
                post="protocols", info={"setting": key, "method": m, "seed": seed})
            for key, m, seed, overrides in grid]
    if not jobs or out is None:
        reasons = "; ".join(r for v in skipped.values() for r in v) or "no ssmis method rows"
        raise SSMISError(f"TABLE {table.id}: nothing to run ({reasons})")
    return Plan(table, settings, chosen, skipped, seed_values or [], budget, protocol, jobs,
                budgets, Path(out))


def describe_budget(plan: Plan, actual: dict[str, list[int]] | None = None) -> str:
    """One line: the budget and how it scales each method's run against the paper's.

    ``actual``: method -> the iterations recorded in its finished runs' ``config.yaml``; the
    line states those (not the planned ones) where they are known, every distinct value."""
    parts = []
    for m, b in plan.budgets.items():
        real = sorted(set((actual or {}).get(m) or [b.iterations]))
        text = f"{m} {'/'.join(map(str, real))} it"
        if real != [b.iterations]:
            text += f" (this budget asks {b.iterations})"
        if b.paper_iterations and b.paper_iterations != b.iterations:
            text += f" (paper {b.paper_iterations})"
        if b.patch:
            text += f", patch {'x'.join(map(str, b.patch))}"
            if b.paper_patch and b.paper_patch != b.patch:
                text += f" (paper {'x'.join(map(str, b.paper_patch))})"
        parts.append(text)
    return "; ".join(parts)
