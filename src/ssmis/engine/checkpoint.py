"""Checkpoints that execute no code on load, verify themselves, and resume consistently.

Weights go to safetensors files whose metadata carry a SHA-256 of the tensors (names, dtypes,
shapes and bytes), so flipped or truncated bytes are found when any command loads them. The
training state (optimizer, step, random states, best scores) goes to a ``torch.save`` file holding
only tensors and plain containers, loaded with ``weights_only=True``.

The resumable checkpoint is one consistent unit: ``last-<step>.safetensors`` and
``last-<step>_state.pt``, then a manifest ``last-<step>.json`` written last that names both with
their step and checksums. Resume takes the newest manifest whose files verify, and falls back to
the previous one (two generations are kept) when the newest is incomplete or damaged.
``last.safetensors`` is a link to (or copy of) the newest weights, for ``evaluate`` / ``predict``.
Every file is written to a temporary file in the same folder and renamed, so a crash never leaves a
half-written file under a real name; a write error is one line and keeps the previous files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ssmis.atomic import atomic_write
from ssmis.atomic import clean_temporary as _clean_folder
from ssmis.engine.runfolder import (
    LAST_LINK,
    LEGACY_STATE,
    generation_files,
    generation_paths,
    generation_stem,
    generation_step,
    manifests,
)
from ssmis.errors import SSMISError

FORMAT = "ssmis-2"
_KEEP_GENERATIONS = 2
RNG_KEYS = ("torch", "numpy_keys", "numpy_pos", "python")


# --------------------------------------------------------------------------- writing


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """:func:`ssmis.atomic.atomic_write` for writers that take the temporary path as a string."""
    atomic_write(path, lambda tmp: write(str(tmp)))


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in key order: name, dtype, shape and raw bytes of each."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def non_finite_tensor(state: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor holding NaN or inf, else None (one host sync)."""
    floats = [(k, v) for k, v in state.items() if v.is_floating_point() and v.numel()]
    if not floats:
        return None
    flags = torch.stack([torch.isfinite(v).all() for _, v in floats]).cpu()
    bad = (~flags).nonzero()
    return floats[int(bad[0])][0] if len(bad) else None


def save_weights(path: Path, state: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``state`` as safetensors with a tensor checksum in its metadata.

    Raises:
        SSMISError: a tensor holds NaN/inf (nothing is written: a diverged model never replaces
            a good checkpoint), or the file cannot be written.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    bad = non_finite_tensor(tensors)
    if bad is not None:
        raise SSMISError(f"training diverged: tensor '{bad}' holds NaN/inf at iteration "
                         f"{metadata.get('step', '?')}; {path.name} was not written (the previous "
                         "checkpoints are kept; lower train.lr?)")
    meta = {**metadata, "format": FORMAT, "tensors_sha256": tensors_digest(tensors)}
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def save_state(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` of ``state`` (tensors and plain containers), serialised in memory first so
    that a full disk is an ``OSError`` of the plain file write (one line), not an error deep in
    torch's zip writer."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    _atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))


def save_resumable(ckpt_dir: Path, step: int, weights: Mapping[str, torch.Tensor],
                   metadata: dict[str, str], state: dict[str, Any]) -> Path:
    """Write one consistent resumable checkpoint at ``step``; returns its manifest.

    Order: weights, state, manifest (names both files with their step and checksums), then the
    ``last.safetensors`` link; generations older than the previous one are deleted last.
    """
    weights_path, state_path, manifest_path = generation_paths(ckpt_dir, step)
    try:
        save_weights(weights_path, weights, metadata)
        save_state(state_path, state)
    except SSMISError:  # no manifest will name them: do not leave half a generation behind
        weights_path.unlink(missing_ok=True)
        state_path.unlink(missing_ok=True)
        raise
    manifest = {
        "format": FORMAT, "step": step,
        "weights": {"file": weights_path.name, "sha256": file_digest(weights_path)},
        "state": {"file": state_path.name, "sha256": file_digest(state_path)},
    }
    _atomic_write(manifest_path, lambda tmp: Path(tmp).write_text(json.dumps(manifest) + "\n"))
    _link_last(weights_path)
    _prune(ckpt_dir, keep=_KEEP_GENERATIONS)
    return manifest_path


def _link_last(weights_path: Path) -> None:
    """Point ``last.safetensors`` at the newest weights (a hard link, else a copy)."""
    target = weights_path.parent / LAST_LINK

    def write(tmp: str) -> None:
        os.unlink(tmp)
        try:
            os.link(weights_path, tmp)
        except OSError:
            import shutil

            shutil.copyfile(weights_path, tmp)

    _atomic_write(target, write)


def _prune(ckpt_dir: Path, keep: int) -> None:
    """Delete generation files (and orphans of a killed write) outside the newest ``keep``."""
    kept = {step for step, _ in manifests(ckpt_dir)[:keep]}
    for path in generation_files(ckpt_dir):
        if generation_step(path.name) not in kept:
            path.unlink(missing_ok=True)


def clean_temporary(ckpt_dir: Path) -> int:
    """Remove temporary files left by a killed write; returns how many were removed."""
    return _clean_folder(ckpt_dir)


# --------------------------------------------------------------------------- reading


def read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception:
        raise SSMISError(f"{path}: damaged or not a safetensors checkpoint") from None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors checkpoint, verified against its checksum.

    Raises:
        SSMISError: missing file, unreadable header, or tensors that do not match the checksum
            written with them (flipped or truncated bytes).
    """
    return _load_verified(path, _header(path))


def _header(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise SSMISError(f"{path}: checkpoint not found")
    return read_metadata(path)


def _load_verified(path: Path, meta: dict[str, str]) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` checked against the checksum in its metadata ``meta``."""
    try:
        tensors = load_file(str(path))
    except Exception:  # safetensors raises several types for a damaged file
        raise SSMISError(f"{path}: damaged or not a safetensors checkpoint") from None
    expected = meta.get("tensors_sha256")
    if expected is None:
        logging.getLogger("ssmis").warning(
            f"warning: {path} carries no checksum (not written by this ssmis): its bytes cannot "
            "be verified")
    elif tensors_digest(tensors) != expected:
        raise SSMISError(f"{path}: damaged checkpoint: the tensors do not match the checksum "
                         "written with them (flipped or truncated bytes)")
    bad = non_finite_tensor(tensors)
    if bad is not None:
        raise SSMISError(f"{path}: tensor '{bad}' holds NaN/inf (a diverged model); use another "
                         "checkpoint")
    return tensors


def load_into(method: torch.nn.Module, path: Path, *, method_name: str,
              model_name: str) -> dict[str, str]:
    """Load a verified checkpoint into ``method`` (a :class:`ssmis.methods.Method`).

    Returns the checkpoint's metadata (``step``, ``method``, ``model``).

    Raises:
        SSMISError: one line naming ``path`` when it is damaged, holds another method's or
            model's weights, or misses / adds a tensor or has one of another shape.
    """
    meta = _header(path)  # another method's weights are refused before reading the tensors
    found = (meta.get("method"), meta.get("model"))
    if None not in found and found != (method_name, model_name):
        raise SSMISError(f"{path}: weights of method '{found[0]}' / model '{found[1]}'; this run "
                         f"is '{method_name}' / '{model_name}'")
    tensors = _load_verified(path, meta)
    expected = method.state_dict()
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise SSMISError(f"{path}: unexpected tensor '{extra[0]}'"
                         + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                         + f": not a checkpoint of this {method_name} / {model_name} run")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise SSMISError(f"{path}: tensor '{key}' has shape {list(value.shape)}, this "
                             f"{method_name} / {model_name} run expects "
                             f"{list(expected[key].shape)}")
    try:
        method.load_state_dict(tensors)
    except RuntimeError:
        missing = sorted(set(expected) - set(tensors))
        raise SSMISError(f"{path}: missing tensor '{missing[0] if missing else '?'}'"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                         + f" of this {method_name} / {model_name} run") from None
    return meta


def load_state(path: Path) -> dict[str, Any]:
    """A training state saved by :func:`save_state`, loaded without executing code.

    Raises:
        SSMISError: missing, damaged, or holding objects that only a code-executing load could
            rebuild (refused).
    """
    if not path.is_file():
        raise SSMISError(f"{path}: training state not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported" in str(err):
            raise SSMISError(f"{path}: refused: it holds objects other than tensors and plain "
                             "containers, and loading those would execute code") from None
        raise SSMISError(f"{path}: damaged or not an ssmis training state") from None
    except Exception:
        raise SSMISError(f"{path}: damaged or not an ssmis training state") from None


def check_state(state: Any, path: Path, total: int) -> dict[str, Any]:
    """Validate a loaded training state against the run (``total`` iterations).

    Raises:
        SSMISError: a missing entry, a step that is not an integer in ``0..total``, or random
            states without their parts, as one line naming ``path``.
    """
    if not isinstance(state, dict):
        raise SSMISError(f"{path}: not an ssmis training state (expected a mapping)")
    for key in ("step", "optimizer", "rng", "best", "best_iter"):
        if key not in state:
            raise SSMISError(f"{path}: training state has no '{key}'")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int):
        raise SSMISError(f"{path}: step {step!r} is not an integer")
    if step < 0:
        raise SSMISError(f"{path}: step {step} is negative")
    if step > total:
        raise SSMISError(f"{path}: step {step} is past the end of the run (train.iterations = "
                         f"{total}; resume with train.iterations >= {step})")
    rng = state["rng"]
    if not isinstance(rng, dict) or any(k not in rng for k in RNG_KEYS):
        raise SSMISError(f"{path}: training state has incomplete random states (expected "
                         f"{', '.join(RNG_KEYS)})")
    kinds = {"torch": torch.is_tensor(rng["torch"]) and rng["torch"].dtype == torch.uint8,
             "numpy_keys": torch.is_tensor(rng["numpy_keys"]) and rng["numpy_keys"].numel() == 624,
             "numpy_pos": isinstance(rng["numpy_pos"], int),
             "python": isinstance(rng["python"], list | tuple) and len(rng["python"]) == 625}
    bad = [k for k, ok in kinds.items() if not ok]
    if bad:
        raise SSMISError(f"{path}: random state '{bad[0]}' is not what ssmis saves")
    if not isinstance(state["optimizer"], dict):
        raise SSMISError(f"{path}: optimizer state is not a mapping")
    for key in ("best", "best_iter"):
        entry = state[key]
        if not isinstance(entry, dict) or any(
                not isinstance(v, int | float) or isinstance(v, bool) for v in entry.values()):
            raise SSMISError(f"{path}: '{key}' is not a mapping of checkpoint names to numbers")
    return state


@dataclass
class Resumable:
    """A verified resumable checkpoint."""

    step: int
    weights: Path
    state: dict[str, Any]
    #: problems of newer generations that were skipped (empty when the newest one was used)
    skipped: list[str]


def find_resumable(ckpt_dir: Path, total: int) -> Resumable:
    """The newest checkpoint whose manifest, files, checksums and steps agree.

    Raises:
        SSMISError: no consistent checkpoint exists (the message names the newest problem).
    """
    skipped: list[str] = []
    for step, manifest_path in manifests(ckpt_dir):
        try:
            found = _verify_generation(ckpt_dir, step, manifest_path, total)
        except SSMISError as err:
            skipped.append(str(err))
            continue
        return Resumable(step, found[0], found[1], _orphans(ckpt_dir, after=step) + skipped)
    if skipped:
        raise SSMISError(f"no consistent checkpoint to resume from: {skipped[0]}")
    skipped = _orphans(ckpt_dir, after=-1)
    if skipped:
        raise SSMISError(f"no consistent checkpoint to resume from: {skipped[0]}; start the run "
                         "again in a new folder")
    legacy = ckpt_dir / LEGACY_STATE
    if legacy.is_file():
        raise SSMISError(f"{ckpt_dir}: checkpoint written by an older ssmis (no manifest); it "
                         "cannot be resumed consistently: start the run again")
    raise SSMISError(f"{ckpt_dir}: no checkpoint to resume from (the run stopped before its "
                     "first checkpoint): start it again in a new folder (or delete this one)")


def _orphans(ckpt_dir: Path, after: int) -> list[str]:
    """Generation files newer than step ``after`` without a manifest (a write was cut)."""
    listed = {step for step, _ in manifests(ckpt_dir)}
    found = set()
    for path in generation_files(ckpt_dir):
        step = generation_step(path.name)
        if step is not None and step > after and step not in listed:
            found.add(step)
    return [f"{ckpt_dir / generation_stem(step)}.*: incomplete checkpoint of iteration {step} (no "
            "manifest: its write was interrupted)" for step in sorted(found, reverse=True)]


def _verify_generation(ckpt_dir: Path, step: int, manifest_path: Path,
                       total: int) -> tuple[Path, dict[str, Any]]:
    try:
        manifest = json.loads(manifest_path.read_text())
        files = {part: (ckpt_dir / manifest[part]["file"], manifest[part]["sha256"])
                 for part in ("weights", "state")}
    except Exception:
        raise SSMISError(f"{manifest_path}: damaged checkpoint manifest") from None
    if manifest.get("step") != step:
        raise SSMISError(f"{manifest_path}: manifest step {manifest.get('step')!r} does not "
                         f"match its name (step {step})")
    for path, digest in files.values():
        if path.parent != ckpt_dir or not path.is_file():
            raise SSMISError(f"{path}: missing (named by {manifest_path.name})")
        if file_digest(path) != digest:
            raise SSMISError(f"{path}: damaged (checksum differs from {manifest_path.name})")
    weights_path = files["weights"][0]
    meta = read_metadata(weights_path)
    if meta.get("step") != str(step):
        raise SSMISError(f"{weights_path}: weights of step {meta.get('step')}, manifest says "
                         f"{step}")
    state = check_state(load_state(files["state"][0]), files["state"][0], total)
    if state["step"] != step:
        raise SSMISError(f"{files['state'][0]}: state of step {state['step']}, manifest says "
                         f"{step}")
    return weights_path, state
