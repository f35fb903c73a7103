"""The ``ssmis`` command: demo, train, evaluate, predict, data, compare, sweep, reproduce, methods.

Every user error ends with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ssmis import __version__
from ssmis.errors import SSMISError
from ssmis.exits import exit_status

EXAMPLES = """examples:
  ssmis demo                                   phantoms: supervised vs BCP, < 3 min on CPU
  ssmis train configs/acdc/supervised_cpu.yaml train.iterations=500 data.labeled_patients=7
  ssmis train --resume runs/acdc_supervised_cpu/20261123-101500-seed1337
  ssmis evaluate runs/acdc_supervised_cpu/20261123-101500-seed1337 --split test
  ssmis data inspect data/my_nifti                 layout, cases, spacings, labels, problems
  ssmis data inspect --config configs/examples/drive.yaml   checks the config's data section
  ssmis data split data/my_nifti --labeled 4 --val 2 --test 2 --out splits.json
  ssmis data prepare configs/examples/nifti.yaml --out data/my_nifti_prepared
  ssmis predict runs/nifti_example/20261123-101500-seed1337 scans/ --out masks/ --tta
  ssmis compare runs/busi_*/*                  one row per experiment, mean ± std over seeds
  ssmis sweep configs/acdc/supervised_cpu.yaml --methods supervised cvbm --seeds 3 --out sw
  ssmis reproduce --list                       the published tables ssmis can rerun
  ssmis reproduce cvbm-acdc --labeled 3 --budget cpu --seeds 3
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
                                      "supervised U-Net and a semi-supervised method (BCP) on the "
                                      "same few-label split, evaluate both on the test split and "
                                      "print them with the gain. Leaves two normal run folders.")
    demo.add_argument("--out", type=Path, default=Path("runs"),
                      help="parent folder for the data and the run (default: runs)")
    demo.add_argument("--iterations", type=int, default=None,
                      help="training iterations of each run (default: the demo's 300)")
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
    train.add_argument("--gpus", type=int, metavar="N",
                       help="one run on N GPUs of this machine: relaunches itself as N DDP "
                            "processes through torch.distributed.run (train.batch_size stays "
                            "the global batch); several nodes: see README, torchrun")

    evaluate = sub.add_parser("evaluate", help="evaluate a run's checkpoint on a split",
                              description="Evaluate the selected (best-by-validation) or last "
                                          "checkpoint of a run; writes metrics.json/.md/.csv "
                                          "(test split, best checkpoint) or metrics_<split>_"
                                          "<checkpoint>.json/.md/.csv in the run folder and "
                                          "prints a table.")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--split", choices=["test", "val"], default="test")
    evaluate.add_argument("--checkpoint", default="best",
                          help="best (by validation) or last, or a file stem in checkpoints/")

    data = sub.add_parser("data", help="inspect, split, prepare or convert a dataset",
                          description="Tools for datasets in any registered layout (ssmis data "
                                      "layouts): your own NIfTI or image/mask folders, the h5 "
                                      "layouts of the literature and the public releases.")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.add_parser("layouts", help="list the registered data layouts (data.layout values)",
                    description="Every registered data layout with its patch dimensionality "
                                "and how it stores a dataset.")
    exa = dsub.add_parser("example", help="write a layout's tiny synthetic copy",
                          description="Write the tiny synthetic dataset a layout is tested on "
                                      "(its exact file names, keys and dtypes) into OUT and "
                                      "print a complete config that trains on it (supervised, 20 "
                                      "iterations).")
    exa.add_argument("layout", help="a data.layout value (ssmis data layouts)")
    exa.add_argument("out", type=Path, help="folder to write (must not exist)")
    conv = dsub.add_parser("convert", help="rewrite a released dataset into a layout it can "
                                           "be read by",
                           description="Convert a released dataset whose folders no layout reads "
                                       "as they are: busi (Dataset_BUSI_with_GT, SynFoC's "
                                       "protocol) into the images layout.")
    conv.add_argument("dataset", help="busi")
    conv.add_argument("src", type=Path, help="the released folder")
    conv.add_argument("dst", type=Path, help="folder to write")
    insp = dsub.add_parser("inspect", help="layout, cases, shapes, spacings, labels, problems",
                           description="Detect the layout and print cases, labeled/unlabeled "
                                       "counts, shapes, spacings, intensity ranges, label values,"
                                       " class frequencies, domains and every problem found. "
                                       "With an experiment YAML (PATH or --config) its data "
                                       "section is checked as training uses it: folders, "
                                       "patterns, ROI, mask values, split. "
                                       "Exit status 1 when a problem was found.")
    insp.add_argument("path", type=Path, nargs="?",
                      help="dataset folder, or an experiment YAML")
    insp.add_argument("overrides", nargs="*", help="key.sub=value overrides (with a YAML)")
    insp.add_argument("--config", type=Path, help="experiment YAML whose data section to check")
    insp.add_argument("--mask-values", help="VALUE:CLASS pairs or LOW-HIGH:CLASS ranges, e.g. "
                                            "0:0,255:1 or 0-127:0,128-255:1")
    insp.add_argument("--num-classes", type=int, help="flag label values >= this")
    insp.add_argument("--all", action="store_true", help="list every case")
    spl = dsub.add_parser("split", help="write a labeled/unlabeled/val/test split file",
                          description="Split a dataset by case (by seed, or an explicit labeled "
                                      "list) and write splits.json; train with "
                                      "data.split_file=splits.json to reproduce it. PATH is a "
                                      "dataset folder or an experiment YAML (its data section).")
    spl.add_argument("path", type=Path)
    spl.add_argument("overrides", nargs="*", help="key.sub=value overrides (with a YAML)")
    spl.add_argument("--labeled", help="labeled cases: a count (4) or a fraction (0.1)")
    spl.add_argument("--labeled-cases", help="comma-separated labeled case ids")
    spl.add_argument("--labeled-domain", help="draw labeled cases from this domain only")
    spl.add_argument("--val", help="validation cases: count or fraction")
    spl.add_argument("--val-domain", choices=["labeled", "all"], default=None,
                     help="with --labeled-domain: validation cases from that domain only "
                          "(labeled, the default) or from all domains")
    spl.add_argument("--test", help="test cases carved from the labeled cases: count or "
                                    "fraction (default: the dataset's labeled imagesTs)")
    spl.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    spl.add_argument("--out", type=Path, default=Path("splits.json"))
    spl.add_argument("--overwrite", action="store_true")
    prep = dsub.add_parser("prepare", help="cache a raw dataset as compressed npz for training",
                           description="Convert a folder dataset (nifti, images, hrf, acdc_nifti, "
                                       "...: a folder, or the data section of an experiment "
                                       "YAML) into float16/uint8 npz "
                                       "files + a manifest; train with data.layout=prepared "
                                       "data.root=OUT.")
    prep.add_argument("path", type=Path)
    prep.add_argument("overrides", nargs="*", help="key.sub=value overrides (with a YAML)")
    prep.add_argument("--out", type=Path, required=True)
    prep.add_argument("--normalization", help="zscore | ct | scale | none | auto (default)")
    prep.add_argument("--mask-values", help="VALUE:CLASS pairs or LOW-HIGH:CLASS ranges, e.g. "
                                            "0:0,255:1 or 0-127:0,128-255:1")
    prep.add_argument("--num-classes", type=int)
    prep.add_argument("--in-channels", type=int)

    pred = sub.add_parser("predict", help="segment NIfTI volumes or images with a trained run",
                          description="NIfTI in -> NIfTI out (same affine/header), images in -> "
                                      "PNG masks of class indices. CHECKPOINT is a run folder "
                                      "(its best checkpoint and config.yaml) or a .safetensors "
                                      "inside one.")
    pred.add_argument("checkpoint", type=Path)
    pred.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                      help="NIfTI/image files or folders of them")
    pred.add_argument("--out", type=Path, required=True, help="output folder")
    pred.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    pred.add_argument("--skip-existing", action="store_true",
                      help="skip cases whose outputs exist (outputs are written to a temporary "
                           "file and renamed, the mask last, so they are complete); rerun with "
                           "it after a stop or a full disk")
    pred.add_argument("--overlay", action="store_true",
                      help="also write <name>_overlay.png (images) or a few slice PNGs "
                           "<name>_overlay_slice<k>.png (NIfTI)")
    pred.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    pred.add_argument("--tta", action="store_true", help="average over flips (slower)")
    pred.add_argument("--fill-nonfinite", action="store_true",
                      help="replace NaN/inf pixels by the image's finite minimum/maximum, with "
                           "a warning (default: such an input is refused, naming the file)")
    pred.add_argument("--threads", type=int, default=None,
                      help="torch CPU threads (default: the run's train.threads, else picked "
                           "from the CPUs this process may use, as in training)")
    pred.add_argument("--quiet", action="store_true", help="no progress bar")

    comp = sub.add_parser("compare", help="one table of several runs, mean ± std over seeds",
                          description="Read the metrics.json of each run folder and print one "
                                      "row per experiment (config name): the mean over its runs "
                                      "(seeds) ± the sample std. Mixed-domain runs get the SynFoC "
                                      "layout: Dice per domain, then the mean over domains.")
    comp.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                      help="run folders (or metrics JSON files)")
    comp.add_argument("--markdown", action="store_true", help="print a Markdown table")
    comp.add_argument("--out", type=Path, help="also write the table to this file")
    comp.add_argument("--split", choices=["test", "val"], default="test",
                      help="which evaluation to read (default: test)")
    comp.add_argument("--checkpoint", default="best",
                      help="best (the run's selected checkpoint, default) or last: reads the "
                           "file `ssmis evaluate --checkpoint` wrote")

    from ssmis.reproduce.commands import add_reproduce_parser, add_sweep_parser

    add_sweep_parser(sub)
    add_reproduce_parser(sub)

    methods = sub.add_parser("methods", help="list the registered methods")
    methods.add_argument("action", nargs="?", choices=["list"], default="list")
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from ssmis.engine.run import resume_run, train_run
    from ssmis.experiment import load_config

    if args.gpus is not None and os.environ.get("WORLD_SIZE") is None:
        return _relaunch_train(args)
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
    try:
        cfg = load_config(Path(args.config), overrides)
    except SSMISError as err:  # the same in every DDP process: printed once
        err.all_processes = True  # type: ignore[attr-defined]
        raise
    train_run(cfg, args.run_dir, evaluate=not args.no_eval, verbose=not args.quiet)
    return 0


def _relaunch_train(args: argparse.Namespace, cpu: bool = False) -> int:
    """``ssmis train ... --gpus N``: check the config here (one line, nothing started), then
    the same command as N processes through ``torch.distributed.run``."""
    from ssmis.engine.distributed import relaunch
    from ssmis.engine.resume import plan_resume
    from ssmis.experiment import load_config

    argv = ["train"]
    if args.resume is not None:
        if args.config and "=" not in args.config:
            raise SSMISError("train --resume RUN_DIR takes no config file (the run's own "
                             "config.yaml is used); give only key=value overrides")
        plan_resume(args.resume, [o for o in [args.config, *args.overrides] if o])
        argv += ["--resume", str(args.resume)]
        if args.config:
            argv.append(args.config)
    else:
        if not args.config:
            raise SSMISError("train: expected a config file, e.g. ssmis train "
                             "configs/acdc/supervised_cpu.yaml (or --resume RUN_DIR)")
        load_config(Path(args.config), list(args.overrides))
        argv.append(args.config)
    argv += list(args.overrides)
    if args.run_dir is not None:
        argv += ["--run-dir", str(args.run_dir)]
    argv += [flag for flag, on in (("--no-eval", args.no_eval), ("--quiet", args.quiet)) if on]
    return relaunch(argv, args.gpus, cpu=cpu)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ssmis.engine.run import evaluate_run

    evaluate_run(args.run_dir, split=args.split, checkpoint=args.checkpoint)
    return 0


def _count_or_fraction(text: str | None, name: str) -> tuple[int | None, float | None]:
    if text is None:
        return None, None
    try:
        value = float(text)
    except ValueError:
        raise SSMISError(f"{name} '{text}': expected a count (4) or a fraction (0.1)") from None
    if "." in text or value < 1:
        if not 0 < value < 1 or name == "--labeled" and not 0 < value <= 1:
            raise SSMISError(f"{name} {text}: a fraction must be in (0, 1)")
        return None, value
    return int(value), None


def _cmd_data(args: argparse.Namespace) -> int:
    from ssmis import datatools

    if args.data_command == "layouts":
        from ssmis.data.layouts import LAYOUTS

        width = max(len(n) for n in LAYOUTS)
        for name, cls in sorted(LAYOUTS.items()):
            dims = "/".join(f"{d}D" for d in cls.patch_dims)
            print(f"{name:<{width}}  {dims:<5}  {cls.description}")
        return 0
    if args.data_command == "example":
        import yaml

        from ssmis.config import validate_config
        from ssmis.data.layouts import get_layout

        cls = get_layout(args.layout)
        if args.out.exists():
            raise SSMISError(f"{args.out}: already exists; give a new folder")
        data = cls.write_example(args.out)
        config = {  # the smallest complete config that trains on the copy (checked below)
            "name": f"example_{args.layout}", "output_dir": "runs", "data": data,
            "model": {"name": "unet2d" if len(data["patch_size"]) == 2 else "vnet3d"},
            "method": {"name": "supervised"},
            "train": {"iterations": 20, "batch_size": 2, "val_every": 10},
        }
        validate_config(config, source=f"ssmis data example {args.layout}")
        print(f"# a config that trains on {args.out}: save it as a .yaml file and run "
              "`ssmis train FILE`\n# (another method: method.name=..., see configs/)")
        print(yaml.safe_dump(config, sort_keys=False, default_flow_style=None), end="")
        return 0
    if args.data_command == "inspect":
        config_path, overrides = args.config, list(args.overrides)
        if config_path is not None and args.path is not None:
            overrides.insert(0, str(args.path))  # `inspect --config CFG key=value`
        elif args.path is not None and args.path.suffix in (".yaml", ".yml"):
            config_path = args.path
        elif overrides:
            raise SSMISError(f"data inspect: overrides {overrides[0]!r} need a config YAML")
        if config_path is None:
            return datatools.inspect_dataset(
                args.path, mask_values=datatools.parse_mask_values(args.mask_values),
                num_classes=args.num_classes, show_all=args.all)
        if args.mask_values is not None or args.num_classes is not None:
            raise SSMISError("data inspect --config takes mask values and classes from the "
                             "config; change them with overrides such as "
                             "data.mask_values=0:0,255:1")
        from ssmis.experiment import load_config

        return datatools.inspect_dataset(config=load_config(config_path, overrides),
                                         show_all=args.all)
    if args.data_command == "split":
        fields: dict = {}
        if args.path.suffix not in (".yaml", ".yml"):
            lc, lf = _count_or_fraction(args.labeled, "--labeled")
            vc, vf = _count_or_fraction(args.val, "--val")
            tc, tf = _count_or_fraction(args.test, "--test")
            cases = [c for c in (args.labeled_cases or "").split(",") if c] or None
            fields = {"labeled_count": lc, "labeled_fraction": lf, "labeled_cases": cases,
                      "labeled_domain": args.labeled_domain, "val_count": vc,
                      "val_domain": args.val_domain,
                      "val_fraction": vf, "test_count": tc, "test_fraction": tf,
                      "split_seed": args.seed}
        elif any(v is not None for v in (args.labeled, args.val, args.test, args.labeled_cases,
                                         args.labeled_domain, args.val_domain)):
            raise SSMISError("data split CONFIG.yaml takes the split from the config; change "
                             "it with overrides such as data.labeled_count=4")
        out = datatools.write_split(args.path, args.out, overwrite=args.overwrite,
                                    overrides=list(args.overrides), **fields)
        print(f"wrote {out}")
        return 0
    if args.data_command == "prepare":
        fields = {"normalization": args.normalization, "num_classes": args.num_classes,
                  "mask_values": datatools.parse_mask_values(args.mask_values),
                  "in_channels": args.in_channels}
        if args.path.suffix in (".yaml", ".yml"):
            if any(v is not None for v in fields.values()):
                raise SSMISError("data prepare CONFIG.yaml takes its settings from the config; "
                                 "change them with overrides such as data.normalization=ct")
            fields = {}
        out = datatools.prepare(args.path, args.out, list(args.overrides), **fields)
        print(f"wrote {out} (train with data.layout=prepared data.root={out})")
        return 0
    if args.data_command == "convert":
        from ssmis.data.converters import convert

        for line in convert(args.dataset, args.src, args.dst):
            print(line)
        return 0
    raise SSMISError("data: expected an action: layouts, example, convert, inspect, split or "
                     "prepare")


def _cmd_predict(args: argparse.Namespace) -> int:
    from ssmis.predict import predict_files

    written = predict_files(args.checkpoint, list(args.inputs), args.out,
                            overwrite=args.overwrite, overlay=args.overlay, device=args.device,
                            tta=args.tta, progress=not args.quiet, threads=args.threads,
                            fill_nonfinite=args.fill_nonfinite,
                            skip_existing=args.skip_existing)
    print(f"wrote {len(written)} file(s) to {args.out}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ssmis.engine.runfolder import result_stem
    from ssmis.eval.compare import compare_runs

    table = compare_runs(args.runs, markdown=args.markdown,
                         metrics_file=f"{result_stem(args.split, args.checkpoint)}.json")
    print(table)
    if args.out is not None:
        from ssmis.atomic import write_text

        write_text(args.out, table + "\n")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ssmis.demo import run_demo

    run_demo(args.out, iterations=args.iterations, verbose=not args.quiet)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from ssmis.reproduce.commands import cmd_sweep

    return cmd_sweep(args)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from ssmis.reproduce.commands import cmd_reproduce

    return cmd_reproduce(args)


def _cmd_methods(args: argparse.Namespace) -> int:
    from ssmis.methods import METHODS

    width = max(len(n) for n in METHODS)
    for name in sorted(METHODS):
        doc = method_summary(METHODS[name])
        print(f"{name:<{width}}  {doc}")
    return 0


def method_summary(cls: type) -> str:
    """The method's ``summary``, else the first sentence of its (or its module's) docstring."""
    if getattr(cls, "summary", ""):
        return cls.summary
    doc = cls.__dict__.get("__doc__") or sys.modules[cls.__module__].__doc__ or ""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    return paragraph.split(". ")[0].rstrip(".")


COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate, "demo": _cmd_demo,
            "methods": _cmd_methods, "data": _cmd_data, "predict": _cmd_predict,
            "compare": _cmd_compare, "sweep": _cmd_sweep, "reproduce": _cmd_reproduce}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = _parse(parser, argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except (Exception, KeyboardInterrupt) as err:  # one line and a status (ssmis.exits)
        status = exit_status(err)
        if status is None:
            raise
        return status
    finally:
        if "ssmis.engine.distributed" in sys.modules:  # leave the DDP process group
            sys.modules["ssmis.engine.distributed"].teardown()


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting ``key=value`` overrides and ``--flags`` come in any order (users put
    flags last: ``ssmis train CONFIG a=1 --no-eval b=2``)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and not any(e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


if __name__ == "__main__":
    sys.exit(main())
