"""Two evaluation protocols, stamped on every number a reproduction reports.

- ``honest`` (default): the checkpoint with the best validation Dice over the whole run,
  distances in mm where the voxel spacing is known, MONAI's HD95 (max of the two directed 95th
  percentiles), empty masks undefined (excluded from the means and counted).
- ``paper``: what the authors' code does: their selection rule (the best validation checkpoint
  of the last phase for two-phase methods), voxel units, medpy's HD95 (pooled 95th percentile)
  and medpy's zeros for empty masks.

Both are computed from the *same predictions* whenever they select the same checkpoint: each
test case is segmented once per distinct checkpoint and scored under every protocol that uses
it. The overrides of each protocol are one list, :data:`PROTOCOLS`; keys the installed config
does not know (``eval.selection`` before it exists) are dropped by :func:`protocol_overrides`
and the selection is then applied here, from the run's ``val.jsonl`` and checkpoint files.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssmis.atomic import atomic_write, write_json
from ssmis.config import ExperimentConfig, apply_overrides, parse_override, read_yaml
from ssmis.engine.runfolder import CONFIG_FILE, SPLIT_FILE, VAL_FILE, phase_best
from ssmis.errors import SSMISError

__all__ = [
    "PROTOCOLS",
    "Protocol",
    "choose_checkpoint",
    "evaluate_protocols",
    "protocol_files",
    "protocol_overrides",
]


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: config overrides plus the checkpoint selection rule."""

    name: str
    overrides: tuple[str, ...]
    selection: str  # best_overall | last_phase
    text: str


#: The only place the protocols' settings are written down.
PROTOCOLS: dict[str, Protocol] = {
    "honest": Protocol(
        "honest",
        ("eval.unit=mm", "eval.hd95_mode=monai", "eval.empty_rule=nan",
         "eval.selection=best_overall"),
        "best_overall",
        "checkpoint: best validation Dice over the whole run; distances in mm where the spacing "
        "is known; HD95 = max of the directed 95th percentiles (MONAI); empty masks undefined",
    ),
    "paper": Protocol(
        "paper",
        ("eval.unit=voxel", "eval.hd95_mode=medpy", "eval.empty_rule=medpy",
         "eval.selection=last_phase"),
        "last_phase",
        "the authors' code: checkpoint = best validation Dice of the last phase; voxel units; "
        "HD95 = medpy's pooled 95th percentile; empty masks scored as medpy's zeros",
    ),
}


def _known_key(parts: Sequence[str]) -> bool:
    """Whether ``parts`` (e.g. ['eval', 'selection']) is a field of the installed config."""
    from pydantic import BaseModel

    from ssmis.config import ExperimentConfig as Model

    if len(parts) == 2 and parts[0] == "data":
        from ssmis.config import layout_option_defaults

        if parts[1] in layout_option_defaults():  # a layout's option, flat in data
            return True
    current: Any = Model
    for part in parts:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return False
        annotation = fields[part].annotation
        current = annotation if isinstance(annotation, type) and issubclass(
            annotation, BaseModel) else None
    return True


def protocol_overrides(name: str) -> list[str]:
    """The protocol's overrides that the installed config accepts (``eval.selection`` is
    dropped while the key does not exist; the selection is then applied by
    :func:`choose_checkpoint`)."""
    if name not in PROTOCOLS:
        raise SSMISError(f"--protocol {name}: expected one of {', '.join(PROTOCOLS)}")
    return [o for o in PROTOCOLS[name].overrides if _known_key(parse_override(o)[0])]


def protocol_files(run_dir: Path) -> dict[str, Path]:
    """``{protocol: RUN/protocol_<name>.json}``: the files :func:`evaluate_protocols` writes."""
    return {name: Path(run_dir) / f"protocol_{name}.json" for name in PROTOCOLS}


def _val_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / VAL_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill; the trainer truncates it on resume
    return [r for r in rows if isinstance(r.get("val_dice"), (int, float))]


def choose_checkpoint(run_dir: Path, selection: str) -> Path:
    """The checkpoint file a selection rule picks, from ``val.jsonl`` and ``checkpoints/``.

    ``best_overall``: the phase whose best validation Dice is the highest of the run;
    ``last_phase``: the last phase. Its ``best_<phase>.safetensors`` is used when it exists
    (two-phase methods), else ``best.safetensors``. SSMISError when neither exists.
    """
    rows = _val_rows(run_dir)
    phase = None
    if rows:
        if selection == "last_phase":
            phase = rows[-1].get("phase")
        elif selection == "best_overall":
            phase = max(rows, key=lambda r: float(r["val_dice"])).get("phase")
        else:
            raise SSMISError(f"eval.selection: '{selection}', expected best_overall or "
                             "last_phase")
    return phase_best(run_dir, phase)


def _protocol_config(raw: dict[str, Any], name: str, source: str) -> ExperimentConfig:
    from ssmis.config import validate_config

    return validate_config(apply_overrides(copy.deepcopy(raw), protocol_overrides(name)),
                           source=source)


def evaluate_protocols(run_dir: Path, overlay_cases: int = 2,
                       names: Sequence[str] = tuple(PROTOCOLS)) -> dict[str, dict[str, Any]]:
    """Score the run's test split under every protocol; write ``protocol_<name>.json``.

    Each file has the fields of ``metrics.json`` (``mean``, ``per_class``, ``per_case``,
    ``unit``, ``hd95_mode``, ``empty_rule``, ``checkpoint``, ``iteration``, ...) plus
    ``protocol``, ``protocol_text`` and ``selection``. The first ``overlay_cases`` test cases
    of the honest checkpoint are kept (one slice each: the label's largest-area slice, so every
    method shows the same one) in ``protocol_overlays.npz``. The run folder's lock is held
    meanwhile. Raises SSMISError (missing checkpoint, data, or a folder in use).
    """
    from ssmis.engine.runlock import run_lock

    run_dir = Path(run_dir)
    with run_lock(run_dir):
        return _evaluate_protocols(run_dir, overlay_cases, names)


def _evaluate_protocols(run_dir: Path, overlay_cases: int,
                        names: Sequence[str]) -> dict[str, dict[str, Any]]:
    import torch

    from ssmis.config import check_paths
    from ssmis.data.splits import Split
    from ssmis.engine.checkpoint import load_into
    from ssmis.engine.data import eval_cases
    from ssmis.engine.evaluate import git_commit
    from ssmis.engine.prepare import prepare
    from ssmis.eval.metrics import (
        EMPTY_RULES,
        METRIC_DEFINITIONS,
        case_metrics,
        class_mask,
        summarize,
    )
    from ssmis.eval.report import pick_slice
    from ssmis.eval.segment import predict_case

    source = str(run_dir / CONFIG_FILE)
    raw = read_yaml(run_dir / CONFIG_FILE)
    cfgs = {n: _protocol_config(raw, n, source) for n in names}
    base = next(iter(cfgs.values()))
    check_paths(base)
    prepared = prepare(base, Split.load(run_dir / SPLIT_FILE), from_run=True)
    method, device = prepared.method, prepared.device
    chosen = {n: choose_checkpoint(run_dir, PROTOCOLS[n].selection) for n in names}
    structures = base.eval.structures(base.data.names())
    display = ({k: k for k in structures} if base.eval.regions
               else {k: base.data.names()[int(k)] for k in structures})
    per_case: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    notes: dict[str, str] = {n: "voxel units" for n in names}
    overlay: dict[str, list] = {"case": [], "image": [], "label": [], "pred": []}
    overlay_ckpt = chosen.get("honest", next(iter(chosen.values())))
    iterations: dict[Path, int] = {}
    present = dict.fromkeys(structures, False)  # classes absent from every test label
    for ckpt in dict.fromkeys(chosen.values()):
        users = [n for n in names if chosen[n] == ckpt]
        meta = load_into(method, ckpt, method_name=base.method.name,
                         model_name=base.model.name)
        iterations[ckpt] = int(meta.get("step", "0"))
        method.eval()
        with torch.no_grad():
            for case in eval_cases(base, prepared.split.test):
                for key, ids in structures.items():
                    present[key] = present[key] or bool(class_mask(case.label, ids).any())
                pred = predict_case(method, case, base, device, amp=base.train.amp)
                for n in users:
                    cfg = cfgs[n]
                    spacing = case.spacing if cfg.eval.unit == "mm" else None
                    if cfg.eval.unit == "mm" and spacing is None:
                        notes[n] = "voxel units: no spacing known (set data.spacing)"
                    elif spacing is not None:
                        notes[n] = "mm, from data.spacing / headers"
                    values = case_metrics(pred, case.label, structures, spacing,
                                          empty_rule=cfg.eval.empty_rule,
                                          hd95_mode=cfg.eval.hd95_mode)
                    per_case[n].append({"case": case.case, "domain": case.domain,
                                        "metrics": {str(k): v for k, v in values.items()}})
                if ckpt == overlay_ckpt and len(overlay["case"]) < overlay_cases:
                    image = case.image if case.image.ndim == case.label.ndim else case.image[0]
                    if case.label.ndim == 2:
                        sl = (image, case.label, pred)
                    else:
                        axis = 0 if base.data.spatial_dims == 2 else 2
                        k = pick_slice(case.label, axis)
                        sl = (image.take(k, axis), case.label.take(k, axis), pred.take(k, axis))
                    overlay["case"].append(case.case)
                    overlay["image"].append(np.asarray(sl[0], dtype=np.float32))
                    overlay["label"].append(np.asarray(sl[1], dtype=np.uint8))
                    overlay["pred"].append(np.asarray(sl[2], dtype=np.uint8))
    results: dict[str, dict[str, Any]] = {}
    commit = git_commit()
    for n in names:
        cfg = cfgs[n]
        unit = "mm" if notes[n].startswith("mm") else "voxel"
        result = {
            "protocol": n, "protocol_text": PROTOCOLS[n].text,
            "selection": PROTOCOLS[n].selection,
            "split": "test", "checkpoint": chosen[n].stem, "iteration": iterations[chosen[n]],
            "seed": cfg.seed, "commit": commit, "method": cfg.method.name,
            "model": cfg.model.name, "dataset": str(cfg.data.root), "unit": unit,
            "spacing": notes[n], "empty_rule": cfg.eval.empty_rule,
            "empty_rule_text": EMPTY_RULES[cfg.eval.empty_rule],
            "hd95_mode": cfg.eval.hd95_mode, "lcc": cfg.eval.lcc,
            "definitions": METRIC_DEFINITIONS,
            "classes": {str(k): v for k, v in display.items()},
            "per_case": per_case[n],
            **summarize(per_case[n], display,
                        absent=[k for k, seen in present.items() if not seen and per_case[n]]),
        }
        results[n] = result
    if overlay["case"]:
        arrays = {f"{k}{i}": overlay[k][i] for k in ("image", "label", "pred")
                  for i in range(len(overlay["case"]))}
        atomic_write(run_dir / "protocol_overlays.npz", lambda tmp: np.savez_compressed(
            tmp, case=np.array(overlay["case"]), **arrays))
    for n, result in results.items():  # the result files last: they mark the job done
        write_json(protocol_files(run_dir)[n], result)
    return results

