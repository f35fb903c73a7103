"""The ``ssmis sweep`` and ``ssmis reproduce`` commands (argument parsing lives in
:mod:`ssmis.cli`; everything else here)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssmis.errors import SSMISError

__all__ = ["add_reproduce_parser", "add_sweep_parser", "cmd_reproduce", "cmd_sweep"]


def _add_execution(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None,
                   help="CPU runs in parallel when no GPU is used (default 1; the CPU threads "
                        "are split between them)")
    p.add_argument("--per-gpu", type=int, default=1, metavar="K",
                   help="runs packed on each visible GPU (default 1; 2-4 suit small 2D runs)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: the visible GPUs if any, else CPU workers")
    p.add_argument("--emit", choices=["slurm"], default=None,
                   help="write a SLURM job-array script (OUT/sweep.slurm) instead of running")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state only")


def add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    """``ssmis sweep CONFIG... [key=value ...] --out DIR`` and its options."""
    p = sub.add_parser(
        "sweep", help="run a grid of configs x methods x seeds x labeled counts",
        description="Expand a grid (configs x --methods x --seeds x --labeled) into runs under "
                    "OUT/<name>[-l<N>]/<method>/seed<S> and run them to the end: in parallel "
                    "over the visible GPUs (--per-gpu K) or CPU workers, skipping finished "
                    "runs and resuming unfinished ones (rerun the same command after a stop). "
                    "One line per finished run with its test Dice and an ETA.")
    p.add_argument("items", nargs="+", metavar="CONFIG|key=value",
                   help="experiment YAMLs and key.sub=value overrides for all of them")
    p.add_argument("--out", type=Path, required=True, help="sweep folder")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="methods; each uses its config beside CONFIG (acdc/supervised_cpu.yaml "
                        "+ cvbm -> acdc/cvbm_cpu.yaml)")
    p.add_argument("--seeds", default=None,
                   help="a count N (the config's seed and the N-1 after it) or a list 1,2,3")
    p.add_argument("--labeled", nargs="+", type=int, metavar="N",
                   help="labeled counts (ACDC: patients; other layouts: cases)")
    _add_execution(p)


def add_reproduce_parser(sub: argparse._SubParsersAction) -> None:
    """``ssmis reproduce TABLE`` and ``ssmis reproduce --list``."""
    p = sub.add_parser(
        "reproduce", help="rerun a published table and report ours beside the paper's",
        description="Run a published table's grid (labeled settings x methods x seeds) through "
                    "the sweep and write OUT/report.md and a self-contained OUT/report.html: "
                    "ours (mean ± std over seeds) beside the paper's numbers, the difference, "
                    "per-class values, a bar chart, validation curves and the same test cases "
                    "for every method, under both protocols (honest, paper). Rerunning the "
                    "command skips finished runs and resumes unfinished ones.")
    p.add_argument("table", nargs="?", help="registry id (see --list) or a table YAML file")
    p.add_argument("--list", action="store_true", help="list the registry's tables")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="ssmis methods to run (default: every row ssmis implements)")
    p.add_argument("--labeled", nargs="+", metavar="N",
                   help="labeled settings to run (default: all of the table's)")
    p.add_argument("--seeds", default="3",
                   help="a count N (the config's seed and the N-1 after it) or a list 1,2,3 "
                        "(default 3)")
    p.add_argument("--budget", choices=["paper", "short", "cpu"], default="paper",
                   help="paper: the published recipe; short: a tenth of its iterations; cpu: "
                        "the *_cpu.yaml configs (default: paper)")
    p.add_argument("--iterations", type=int, default=None,
                   help="total iterations per run (scales the budget's config)")
    p.add_argument("--protocol", choices=["honest", "paper"], default="honest",
                   help="the headline protocol of the report (both are always computed)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: reproduce/<table>-<budget>-<N>it, N the "
                        "iterations per run); runs in it are reused only when their recorded "
                        "config equals the grid's, else the command stops naming the field")
    p.add_argument("--configs", type=Path, default=Path("configs"),
                   help="the configs folder (default: ./configs of the ssmis repository)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="the dataset folder, when not where the configs say")
    p.add_argument("--set", nargs="+", default=[], metavar="key=value", dest="overrides",
                   help="extra overrides for every run (e.g. train.device=cuda)")
    _add_execution(p)


def _split_items(items: list[str]) -> tuple[list[Path], list[str]]:
    configs = [Path(i) for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    if not configs:
        raise SSMISError("sweep: expected at least one config file")
    return configs, overrides


def _execute(jobs, out: Path, args: argparse.Namespace) -> int | None:
    """Dry run, SLURM script, or the sweep itself; None after a completed local sweep."""
    from ssmis.reproduce.sweep import emit_slurm, job_state, make_slots, run_jobs

    states = {j.key: job_state(j) for j in jobs}  # also refuses folders of other configs
    if args.dry_run:
        for j in jobs:
            print(f"{states[j.key]:<7} {j.key}  ->  {j.run_dir}")
        return 0
    if args.emit == "slurm":
        script = emit_slurm(jobs, out, max_parallel=None)
        todo = sum(s != "done" for s in states.values())
        print(f"wrote {script} ({len(jobs)} array tasks, {todo} not finished); submit with "
              f"`sbatch {script}`")
        return 0
    slots = make_slots(args.device, args.workers, args.per_gpu)
    outcome = run_jobs(jobs, out, slots)
    args._outcome = outcome
    return None


def cmd_sweep(args: argparse.Namespace) -> int:
    """``ssmis sweep``: expand, validate, run; exit 1 when a run failed."""
    from ssmis.reproduce.sweep import expand_grid

    configs, overrides = _split_items(args.items)
    jobs = expand_grid(configs, args.out, methods=args.methods, seeds=args.seeds,
                       labeled=args.labeled, overrides=overrides)
    status = _execute(jobs, args.out, args)
    if status is not None:
        return status
    outcome = args._outcome
    print(f"sweep: {len(outcome.finished)} finished, {len(outcome.skipped)} skipped (already "
          f"done), {len(outcome.failed)} failed, in {outcome.wall_s / 60:.1f} min")
    return 1 if outcome.failed else 0


def _list_tables() -> int:
    from ssmis.reproduce.published import load_not_transcribed, load_registry

    tables = load_registry()
    width = max(len(t.id) for t in tables)
    for t in tables:
        settings = ", ".join(s.key for s in t.settings)
        status = (f"runnable ({t.layout}, configs/{t.config_dir}); ssmis methods: "
                  f"{', '.join(t.ssmis_methods())}" if t.runnable
                  else f"NOT RUNNABLE: {t.not_runnable_reason}")
        print(f"{t.id:<{width}}  {t.paper}, Table {t.table}: {t.dataset}, labeled "
              f"{settings} ({t.labeled_unit})")
        print(f"{'':<{width}}  {status}")
    missing = load_not_transcribed()
    if missing:
        print("\nknown tables not in the registry (numbers not transcribed):")
        for m in missing:
            print(f"  {m.paper}, {m.table} ({m.dataset}): {m.reason}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """``ssmis reproduce``: plan (validated), sweep, report; exit 1 when a run failed."""
    from ssmis.atomic import write_text
    from ssmis.reproduce.published import find_table
    from ssmis.reproduce.report import write_report
    from ssmis.reproduce.runner import plan_reproduction

    if args.list:
        return _list_tables()
    if not args.table:
        raise SSMISError("reproduce: expected a TABLE (see `ssmis reproduce --list`)")
    table = find_table(args.table)
    plan = plan_reproduction(table, args.out, args.configs, methods=args.methods,
                             labeled=args.labeled, seeds=args.seeds, budget=args.budget,
                             iterations=args.iterations, protocol=args.protocol,
                             data_root=args.data_root, extra_overrides=args.overrides)
    out = plan.out
    status = _execute(plan.jobs, out, args)
    if status is not None:
        return status
    outcome = args._outcome
    previous = _previous_wall(out)
    wall = outcome.wall_s + previous
    paths = write_report(plan, wall_s=wall if wall > 0 else None)
    write_text(out / "wall_time_s.txt", f"{wall:.1f}\n")
    print(f"reproduce {table.id}: {len(outcome.finished)} runs finished now, "
          f"{len(outcome.skipped)} already done, {len(outcome.failed)} failed")
    print(f"wrote {paths['md']} and {paths['html']}")
    sys.stdout.flush()
    return 1 if outcome.failed else 0


def _previous_wall(out: Path) -> float:
    """Sweep wall time spent by earlier invocations (kept in OUT/wall_time_s.txt)."""
    try:
        return float((out / "wall_time_s.txt").read_text().strip())
    except (OSError, ValueError):
        return 0.0
