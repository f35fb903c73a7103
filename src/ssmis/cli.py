"""The ``ssmis`` command: demo, train, evaluate, methods.

Every user error ends with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssmis import __version__
from ssmis.errors import SSMISError

EXAMPLES = """examples:
  ssmis demo                                   synthetic phantoms, supervised U-Net, ~2 min on CPU
  ssmis train configs/acdc/supervised_cpu.yaml train.iterations=500 data.labeled_patients=7
  ssmis train --resume runs/acdc_supervised_cpu/20261123-101500-seed1337
  ssmis evaluate runs/acdc_supervised_cpu/20261123-101500-seed1337 --split test
  ssmis methods
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssmis",
        description="Semi-supervised medical image segmentation: train, evaluate and compare "
                    "methods on labeled + unlabeled scans.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ssmis {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="train and evaluate on generated phantoms (no files needed)",
                          description="Generate a small synthetic 2D cardiac-like dataset, train a "
                                      "supervised U-Net, evaluate it on the test split and print "
                                      "the metrics. Leaves a normal run folder.")
    demo.add_argument("--out", type=Path, default=Path("runs"),
                      help="parent folder for the data and the run (default: runs)")
    demo.add_argument("--iterations", type=int, default=None,
                      help="training iterations (default: the demo's 400)")
    demo.add_argument("--quiet", action="store_true", help="print only the final table")

    train = sub.add_parser("train", help="train a method from a YAML experiment file",
                           description="Train from a YAML experiment file. Overrides are "
                                       "key.sub=value pairs, e.g. train.iterations=1000 "
                                       "data.labeled_patients=7 method.name=supervised.")
    train.add_argument("config", nargs="?",
                       help="experiment YAML (e.g. configs/acdc/supervised.yaml)")
    train.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR",
                       help="continue a stopped run from its last checkpoint")
    train.add_argument("--run-dir", type=Path, help="run folder (default: output_dir/name/time)")
    train.add_argument("--no-eval", action="store_true", help="skip the final test evaluation")
    train.add_argument("--quiet", action="store_true", help="no console log (files still written)")

    evaluate = sub.add_parser("evaluate", help="evaluate a run's checkpoint on a split",
                              description="Evaluate the best-by-validation (or last) checkpoint "
                                          "of a run; writes metrics.json/.md/.csv in the run "
                                          "folder and prints a table.")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--split", choices=["test", "val"], default="test")
    evaluate.add_argument("--checkpoint", default="best",
                          help="best (by validation) or last, or a file stem in checkpoints/")

    methods = sub.add_parser("methods", help="list the registered methods")
    methods.add_argument("action", nargs="?", choices=["list"], default="list")
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from ssmis.config import load_config
    from ssmis.engine.run import resume_run, train_run

    overrides = list(args.overrides)
    if args.resume is not None:
        if args.config:
            if "=" not in args.config:
                raise SSMISError("train --resume RUN_DIR takes no config file (the run's own "
                                 "config.yaml is used); give only key=value overrides")
            overrides.insert(0, args.config)
        resume_run(args.resume, overrides, evaluate=not args.no_eval, verbose=not args.quiet)
        return 0
    if not args.config:
        raise SSMISError("train: expected a config file, e.g. ssmis train "
                         "configs/acdc/supervised_cpu.yaml (or --resume RUN_DIR)")
    cfg = load_config(Path(args.config), overrides)
    train_run(cfg, args.run_dir, evaluate=not args.no_eval, verbose=not args.quiet)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ssmis.engine.run import evaluate_run

    evaluate_run(args.run_dir, split=args.split, checkpoint=args.checkpoint)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ssmis.demo import run_demo

    run_demo(args.out, iterations=args.iterations, verbose=not args.quiet)
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from ssmis.methods import METHODS

    width = max(len(n) for n in METHODS)
    for name in sorted(METHODS):
        doc = (METHODS[name].__doc__ or "").strip().splitlines()[0]
        print(f"{name:<{width}}  {doc}")
    return 0


COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate, "demo": _cmd_demo,
            "methods": _cmd_methods}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except SSMISError as err:
        print(f"ssmis: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssmis: interrupted; a run can be continued with `ssmis train --resume RUN_DIR`",
              file=sys.stderr)
        return 130
    except Exception as err:  # a data-loader worker wraps our errors in its own exception type
        original = _wrapped_user_error(err)
        if original is None:
            raise
        print(f"ssmis: error: {original}", file=sys.stderr)
        return 2


def _wrapped_user_error(err: Exception) -> str | None:
    """The one-line message of an SSMISError re-raised by a DataLoader worker, if that's it."""
    text = str(err)
    marker = "SSMISError: "
    if marker not in text:
        return None
    return text.rsplit(marker, 1)[1].strip().splitlines()[0]


if __name__ == "__main__":
    sys.exit(main())
