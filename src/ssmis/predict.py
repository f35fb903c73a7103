"""``ssmis predict``: segment new NIfTI volumes or image files with a trained run.

NIfTI in -> NIfTI out (uint8 class indices, the input's affine and header geometry, voxel
order unchanged), optionally with a few slice PNGs of the prediction over the image; images in
-> PNG masks of class indices (optionally a colour overlay PNG).
Inputs are never overwritten and existing outputs only with ``overwrite`` (``skip_existing``
keeps finished cases instead); every output path is checked before the first prediction. Every
output is written to a temporary file and renamed (:mod:`ssmis.atomic`): a full disk or a kill
leaves no partial file under a real name, and the error names the file.
"""

from __future__ import annotations

import glob
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssmis.atomic import atomic_write
from ssmis.config import ExperimentConfig, read_yaml, validate_config
from ssmis.data.cases import strip_ending
from ssmis.data.nifti_io import CHANNEL_STEM, NIFTI_ENDINGS, read_nifti
from ssmis.data.normalisation import ChannelNorm, resolve_scheme
from ssmis.data.pictures import IMAGE_EXTS, read_picture
from ssmis.engine.runfolder import CONFIG_FILE, resolve_checkpoint, selected_checkpoint
from ssmis.errors import SSMISError

#: slice PNGs written per NIfTI volume by ``--overlay``
OVERLAY_SLICES = 3


@dataclass
class Job:
    name: str  # output stem
    kind: str  # nifti | image
    inputs: list[Path]  # one per channel (nifti) or one image


def collect_jobs(inputs: list[Path], in_channels: int) -> list[Job]:
    files: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = [p for p in sorted(item.iterdir()) if p.is_file() and _kind(p)]
            if not found:
                raise SSMISError(f"{item}: no NIfTI or image files in this folder")
            files.extend(found)
        elif item.is_file():
            if not _kind(item):
                raise SSMISError(f"{item}: not a NIfTI (.nii, .nii.gz) or image "
                                 f"({', '.join(IMAGE_EXTS)}) file")
            files.append(item)
        else:
            raise SSMISError(f"{item}: input not found")
    jobs: dict[str, Job] = {}
    for path in files:
        kind = _kind(path)
        stem = strip_ending(path.name, NIFTI_ENDINGS) if kind == "nifti" else path.stem
        assert stem is not None
        match = CHANNEL_STEM.match(stem)
        name = match["case"] if match else stem
        if kind == "nifti" and in_channels > 1:
            if match is None:
                raise SSMISError(f"{path}: the model takes {in_channels} channels; name files "
                                 "<case>_0000.nii.gz, <case>_0001.nii.gz, ...")
            job = jobs.setdefault(name, Job(name, kind, []))
            job.inputs.append(path)
            continue
        if name in jobs:
            raise SSMISError(f"{path}: a second input named '{name}' ({jobs[name].inputs[0]})")
        jobs[name] = Job(name, kind, [path])
    for job in jobs.values():
        job.inputs.sort()
        if job.kind == "nifti" and len(job.inputs) != in_channels:
            raise SSMISError(f"{job.inputs[0]}: case '{job.name}' has {len(job.inputs)} channel "
                             f"file(s), the model takes {in_channels}")
    return list(jobs.values())


def _kind(path: Path) -> str | None:
    if strip_ending(path.name, NIFTI_ENDINGS) is not None:
        return "nifti"
    if path.suffix.lower() in IMAGE_EXTS:
        return "image"
    return None


def _outputs(job: Job, out: Path, overlay: bool) -> list[Path]:
    if job.kind == "nifti":
        return [out / f"{job.name}.nii.gz"]
    paths = [out / f"{job.name}.png"]
    if overlay:
        paths.append(out / f"{job.name}_overlay.png")
    return paths


def run_normalisation(cfg: ExperimentConfig, run_dir: Path) -> list[ChannelNorm]:
    """The run's normalisation per channel: the records its ``config.yaml`` holds
    (``data.resolved_normalization``), else (runs of an older ssmis) the rule that version
    trained with, resolved from the run's data; when the data folder is gone, what
    ``data.normalization`` alone says (picture runs: each file by its type's maximum), with a
    warning.

    Raises:
        SSMISError: a record that is not valid, or an older run whose normalisation depends on
            a data folder that cannot be read (the line says how to give it).
    """
    from ssmis.engine.data import build_layout, pin_run_normalisation

    where = f"{run_dir / CONFIG_FILE}: data.resolved_normalization"
    records = cfg.data.resolved_normalization
    if records:
        norms = [ChannelNorm.from_dict(r, where) for r in records]
    else:
        try:
            cfg, layout, _ = pin_run_normalisation(cfg, build_layout(cfg))
            norms = layout.normalisation()
        except SSMISError as err:
            norms = _without_data(cfg, where, err)
    if len(norms) != cfg.data.in_channels:
        raise SSMISError(f"{where}: {len(norms)} record(s) for data.in_channels = "
                         f"{cfg.data.in_channels}")
    return norms


def _without_data(cfg: ExperimentConfig, where: str, err: SSMISError) -> list[ChannelNorm]:
    """An older run's normalisation from its config alone (its data folder is unreadable)."""
    d = cfg.data
    pictures = d.layout == "images"
    schemes = [resolve_scheme(d.normalization, c, None, from_image_file=pictures)
               for c in range(d.in_channels)]
    given = [d.normalization] if isinstance(d.normalization, str) else list(d.normalization)
    explicit = "auto" not in given
    if not (pictures or explicit):
        raise SSMISError(
            f"{where}: not recorded (a run of an older ssmis), and data.normalization auto "
            f"depends on the run's data, which cannot be read ({err}); point data.root to the "
            "training data, or add data.resolved_normalization: [{scheme: zscore}] (one per "
            "channel: zscore, minmax, ct, scale or none)")
    window = (float(d.intensity_window[0]), float(d.intensity_window[1]))
    print(f"warning: {where}: not recorded (a run of an older ssmis) and its data cannot be "
          f"read; using data.normalization alone: {schemes}", file=sys.stderr)
    return [ChannelNorm(s, clip=window if s == "ct" else None,
                        source="data.normalization of the run's config.yaml") for s in schemes]


def finite_or_refuse(path: Path, x: np.ndarray, fill: bool) -> np.ndarray:
    """``x`` when every value is finite; with ``fill``, NaN and -inf replaced by the finite
    minimum and +inf by the finite maximum, with a warning naming the file.

    Raises:
        SSMISError: non-finite values without ``fill`` (or no finite value at all).
    """
    if x.dtype.kind != "f":
        return x
    bad = ~np.isfinite(x)
    count = int(bad.sum())
    if not count:
        return x
    finite = x[~bad]
    if not fill or finite.size == 0:
        raise SSMISError(f"{path}: {int(np.isnan(x).sum())} NaN and {int(np.isinf(x).sum())} "
                         "inf values, expected finite intensities (--fill-nonfinite replaces "
                         "them by the image's finite minimum / maximum)")
    lo, hi = float(finite.min()), float(finite.max())
    out = np.where(np.isposinf(x), hi, np.where(bad, lo, x)).astype(x.dtype)
    print(f"warning: {path}: {count} NaN/inf value(s) replaced by the finite minimum {lo:g} "
          f"(NaN, -inf) / maximum {hi:g} (+inf) (--fill-nonfinite)", file=sys.stderr)
    return out


def _normalised(path: Path, x: np.ndarray, norm: ChannelNorm, fill: bool,
                picture: bool = False) -> np.ndarray:
    """One channel of an input file, checked and normalised by the run's record."""
    x = finite_or_refuse(path, x, fill)
    norm.check_input(path, x.dtype, float(x.max()) if x.size else 0.0, picture=picture)
    return norm.apply(x)


def _load_job(job: Job, cfg: ExperimentConfig, norms: list[ChannelNorm],
              fill_nonfinite: bool = False) -> tuple[np.ndarray, object]:
    """(C, *spatial) float32 input normalised exactly as the run's training data, and the
    reference the output is written with (NIfTI image, or the raw picture)."""
    d = cfg.data
    if job.kind == "nifti":
        channels, ref = [], None
        for c, path in enumerate(job.inputs):
            data, _, _, img = read_nifti(path)
            if ref is not None and data.shape != channels[0].shape:
                raise SSMISError(f"{path}: shape {data.shape} differs from "
                                 f"{job.inputs[0].name} {channels[0].shape}")
            channels.append(_normalised(path, data, norms[c], fill_nonfinite))
            ref = ref or img
        return np.stack(channels), ref
    mode = {1: "L", 3: "RGB"}.get(d.in_channels)
    if mode is None:
        raise SSMISError(f"{job.inputs[0]}: the model takes {d.in_channels} channels; image "
                         "files give 1 or 3")
    raw = read_picture(job.inputs[0], mode)
    pixels = raw if raw.ndim == 3 else raw[..., None]
    image = np.stack([_normalised(job.inputs[0], pixels[..., c], norms[c], fill_nonfinite,
                                  picture=True)
                      for c in range(pixels.shape[-1])])
    return image, raw


def predict_files(checkpoint: Path, inputs: list[Path], out: Path, *, overwrite: bool = False,
                  overlay: bool = False, device: str = "auto", tta: bool = False,
                  progress: bool = True, threads: int | None = None,
                  fill_nonfinite: bool = False, skip_existing: bool = False) -> list[Path]:
    """Segment ``inputs`` (files or folders) with the run's checkpoint; writes into ``out``.

    Every input is normalised by the run's own record (:func:`run_normalisation`), whatever
    its container. ``fill_nonfinite``: NaN/inf pixels are replaced (with a warning) instead of
    refused.

    ``threads``: torch CPU threads; None = the run's ``train.threads``, else the automatic
    pick of :mod:`ssmis.engine.threads`. Every output is written to a temporary file and
    renamed (:mod:`ssmis.atomic`), the mask last, so an existing mask is a finished case:
    ``skip_existing`` skips those cases (a rerun after a full disk or a kill) and replaces the
    other outputs of unfinished ones. Returns the written paths. Raises SSMISError (one line,
    before anything is written) for unreadable inputs or outputs that exist; a write error is
    one line naming the file.
    """
    from ssmis.engine.checkpoint import load_into
    from ssmis.engine.prepare import resolve_device
    from ssmis.engine.threads import apply_threads
    from ssmis.eval.inference import flip_tta
    from ssmis.eval.segment import segment
    from ssmis.methods import build_method

    if threads is not None and threads < 1:
        raise SSMISError(f"--threads {threads}: expected a number >= 1")
    run_dir, ckpt = resolve_checkpoint(checkpoint)
    cfg = validate_config(read_yaml(run_dir / CONFIG_FILE), source=str(run_dir / CONFIG_FILE))
    d = cfg.data
    jobs = collect_jobs(inputs, d.in_channels)
    for job in jobs:
        if job.kind == "image" and d.spatial_dims == 3:
            raise SSMISError(f"{job.inputs[0]}: a 3D model ({cfg.model.name}) cannot segment "
                             "2D images")
    if overwrite and skip_existing:
        raise SSMISError("--overwrite and --skip-existing: choose one")
    out = Path(out)
    sources = {p.resolve() for job in jobs for p in job.inputs}
    planned: dict[Path, Path] = {}
    for job in jobs:
        for target in _outputs(job, out, overlay):
            if target.resolve() in sources:
                raise SSMISError(f"{target}: would overwrite an input; choose another --out")
            if target in planned:
                raise SSMISError(f"{target}: two inputs give the same output "
                                 f"({planned[target]}, {job.inputs[0]})")
            planned[target] = job.inputs[0]
    if skip_existing:
        jobs = [job for job in jobs if not _finished(job, out, overlay)]
    elif not overwrite:
        for job in jobs:
            _refuse_existing(job, out, overlay)
    norms = run_normalisation(cfg, run_dir)
    dev = resolve_device(device)
    apply_threads(threads or cfg.train.threads)
    method = build_method(cfg)
    if checkpoint.is_dir():
        ckpt = selected_checkpoint(run_dir, method.phases()) or ckpt
    load_into(method, ckpt, method_name=cfg.method.name, model_name=cfg.model.name)
    method.to(dev).eval()

    def predict_fn(batch: torch.Tensor) -> torch.Tensor:
        return method.predict(batch).float()

    fn = flip_tta(predict_fn, d.spatial_dims) if tta else predict_fn
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    iterator = jobs
    if progress and len(jobs) > 1:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc="predict", unit="file", file=sys.stderr)
    with torch.no_grad():
        for done, job in enumerate(iterator):
            try:
                image, ref = _load_job(job, cfg, norms, fill_nonfinite)
            except SSMISError as err:
                if not done:
                    raise
                raise SSMISError(f"{err}; the {done} case(s) before it were written completely "
                                 "(rerun with --skip-existing after fixing it)") from None
            targets = _outputs(job, out, overlay)
            if job.kind == "nifti":
                pred = _predict_volume(fn, image, cfg, dev)
                if overlay:
                    written.extend(write_slice_overlays(out, job.name, image[0], pred,
                                                        _overlay_axis(cfg, pred.ndim)))
                written.append(_write_nifti(targets[0], pred, ref))  # last: marks it finished
            else:
                x = image[0] if image.shape[0] == 1 else image
                pred = segment(fn, x, 2, cfg, dev)
                written.extend(_write_png(targets, pred, ref))
    return written


def _slice_overlays(job: Job, out: Path) -> list[Path]:
    """The ``--overlay`` slice PNGs of a volume already in ``out``."""
    return sorted(out.glob(f"{glob.escape(job.name)}_overlay_slice*.png"))


def _finished(job: Job, out: Path, overlay: bool) -> bool:
    """Whether every output of ``job`` exists (complete: outputs are renamed into place, the
    mask last); with ``overlay`` a volume needs its slice PNGs too."""
    if not all(p.is_file() for p in _outputs(job, out, overlay)):
        return False
    return not (overlay and job.kind == "nifti") or bool(_slice_overlays(job, out))


def _refuse_existing(job: Job, out: Path, overlay: bool) -> None:
    """SSMISError naming the first output of ``job`` that exists."""
    existing = [p for p in _outputs(job, out, overlay) if p.exists()]
    if overlay and job.kind == "nifti":
        existing += _slice_overlays(job, out)
    if existing:
        raise SSMISError(f"{existing[0]}: exists (use --overwrite to replace it, or "
                         "--skip-existing to keep finished cases)")


def _predict_volume(fn, image: np.ndarray, cfg: ExperimentConfig, dev) -> np.ndarray:
    """(C, *spatial) in file voxel order -> label map in the same order."""
    from ssmis.eval.segment import segment

    ndim = image.ndim - 1
    if cfg.data.spatial_dims == 2 and ndim == 3:
        axis = cfg.data.slice_axis
        moved = np.moveaxis(image, axis + 1, 1)
        x = moved[0] if moved.shape[0] == 1 else moved
        return np.moveaxis(segment(fn, x, 3, cfg, dev), 0, axis)
    if cfg.data.spatial_dims == 3 and ndim != 3:
        raise SSMISError(f"a 3D model needs 3D volumes, got shape {image.shape[1:]}")
    x = image[0] if image.shape[0] == 1 else image
    return segment(fn, x, ndim, cfg, dev)


def _write_nifti(path: Path, pred: np.ndarray, ref) -> Path:
    import nibabel as nib

    header = ref.header.copy()
    header.set_data_dtype(np.uint8)
    data = pred.astype(np.uint8)
    if len(ref.shape) == 4:
        data = data[..., None]
    img = nib.Nifti1Image(data, ref.affine, header=header)
    img.header.set_slope_inter(1, 0)
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)))


def _blend(base: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8: ``base`` (0-255, grey H x W or RGB) with each class's colour at 50 %."""
    from ssmis.eval.report import class_color

    base = base.astype(np.float32)
    if base.ndim == 2:
        base = np.repeat(base[..., None], 3, axis=-1)
    for k in np.unique(pred):
        if k == 0:
            continue
        color = np.asarray(class_color(int(k))) * 255.0
        mask = pred == k
        base[mask] = 0.5 * base[mask] + 0.5 * color
    return np.clip(base, 0, 255).astype(np.uint8)


def _write_picture(path: Path, pixels: np.ndarray) -> Path:
    """Save a uint8 array as an image file (format from the name), atomically."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(pixels))
    return atomic_write(path, lambda tmp: picture.save(tmp))


def _write_png(targets: list[Path], pred: np.ndarray, raw: np.ndarray) -> list[Path]:
    """The mask (``targets[0]``) and, when asked, the overlay; the mask is written last, so
    that an existing mask means a finished case (``skip_existing``)."""
    if len(targets) > 1:
        base = raw.astype(np.float32)
        if base.max() > 255:
            base = base / base.max() * 255.0
        _write_picture(targets[1], _blend(base, pred))
    _write_picture(targets[0], pred.astype(np.uint8))
    return targets


def _overlay_axis(cfg: ExperimentConfig, ndim: int) -> int:
    """The axis the overlay slices are cut along: a 2D model's ``data.slice_axis``, else the
    last array axis (the axial one of a NIfTI volume in RAS-like order)."""
    if ndim < 3:
        return 0
    return cfg.data.slice_axis if cfg.data.spatial_dims == 2 else ndim - 1


def overlay_slices(pred: np.ndarray, axis: int, count: int = OVERLAY_SLICES) -> list[int]:
    """Up to ``count`` distinct slice indices along ``axis``: spread evenly (at 1/(count+1),
    2/(count+1), ... ) over the slices holding predicted foreground, or over the whole volume
    when there is none."""
    other = tuple(i for i in range(pred.ndim) if i != axis)
    holding = np.flatnonzero((pred > 0).any(axis=other))
    pool = holding if holding.size else np.arange(pred.shape[axis])
    picks = [pool[min(int(len(pool) * (k + 1) / (count + 1)), len(pool) - 1)]
             for k in range(count)]
    return sorted({int(i) for i in picks})


def write_slice_overlays(out: Path, name: str, image: np.ndarray, pred: np.ndarray,
                         axis: int) -> list[Path]:
    """``--overlay`` for a volume: ``<name>_overlay_slice<k>.png`` for the slices of
    :func:`overlay_slices` along ``axis``: the image (first channel, 1st-99th percentile grey
    window) with the predicted classes in the colours of ``overlays_test.png``, rotated by 90
    degrees so that the first array axis runs left to right. A 2D array gives slice 0."""
    from ssmis.eval.report import display_image

    volume, labels = (image[None], pred[None]) if pred.ndim == 2 else (image, pred)
    axis = 0 if pred.ndim == 2 else axis
    written = []
    for index in overlay_slices(labels, axis):
        grey, style = display_image(np.take(volume, index, axis))
        lo, hi = style["vmin"], style["vmax"]
        base = np.clip((grey - lo) / (hi - lo), 0.0, 1.0) * 255.0
        rgb = _blend(np.rot90(base), np.rot90(np.take(labels, index, axis)))
        written.append(_write_picture(out / f"{name}_overlay_slice{index}.png", rgb))
    return written
