"""``ssmis data inspect | split | prepare``: look at a dataset, split it, cache it.

``inspect`` never stops at the first problem: it lists every one it finds (missing label, shape
mismatch, unexpected label value, NaN, unreadable file) with the file name, and returns 1 when
there is any, 0 when the dataset is clean.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ssmis.config import DataConfig
from ssmis.data.cases import Catalog, ignored_lines
from ssmis.data.layouts import CatalogLayout, find_layout, get_layout, scan_catalog
from ssmis.data.layouts.catalog import resample_notes
from ssmis.data.layouts.h5 import H5Layout
from ssmis.data.nifti_io import dataset_json_values, declared_classes_problem
from ssmis.data.normalisation import describe_all
from ssmis.data.options import layout_option
from ssmis.data.reader import CaseReader
from ssmis.errors import SSMISError

_PREVIEW = 20


def parse_mask_values(text: str | None) -> dict[int | str, int] | None:
    """``"0:0,255:1"`` -> {0: 0, 255: 1}; ranges ``"0-127:0,128-255:1"`` -> {"0-127": 0,
    "128-255": 1} (:func:`ssmis.data.masks.normalize_mask_values`). SSMISError naming
    --mask-values when the text is not understood."""
    if not text:
        return None
    from ssmis.data.masks import normalize_mask_values

    try:
        return normalize_mask_values(text, "--mask-values")
    except ValueError as exc:
        raise SSMISError(str(exc)) from None


def loose_data_config(layout: str, root: Path, **fields: Any) -> DataConfig:
    """A DataConfig for tools that need no split or patch size (not validated)."""
    values = {k: v for k, v in fields.items() if v is not None}
    values.setdefault("num_classes", 256)
    values.setdefault("patch_size", [1, 1])
    generic = {k: v for k, v in values.items() if k in DataConfig.model_fields}
    options = {k: v for k, v in values.items() if k not in DataConfig.model_fields}
    base = DataConfig.model_construct(layout=layout, root=Path(root), **generic)
    for name, info in DataConfig.model_fields.items():  # defaults model_construct leaves unset
        if name not in base.__dict__ and not info.is_required():
            base.__dict__[name] = info.get_default(call_default_factory=True)
    params_cls = get_layout(layout).Params
    base._params = params_cls.model_construct(
        **{k: v for k, v in options.items() if k in params_cls.model_fields})
    return base


def _channels_of(catalog: Catalog) -> int:
    if catalog.kind == "nifti":
        first = next(iter(catalog.cases.values()), None)
        return len(catalog.channel_names) or (len(first.images) if first else 1)
    if catalog.kind == "prepared":
        return int(catalog.manifest.get("in_channels", 1))
    from ssmis.data.pictures import picture_size

    for info in catalog.cases.values():
        try:
            return 3 if picture_size(info.images[0])[1] in ("RGB", "RGBA", "P", "CMYK") else 1
        except SSMISError:
            continue
    return 1


# --------------------------------------------------------------------------- inspect


def _h5_cases(layout: str, root: Path, problems: list[str]) -> Iterator[dict[str, Any]]:
    """Cases of an :class:`~ssmis.data.layouts.h5.H5Layout` read through its interface
    (its case lists and file paths); a problem is collected, not raised."""
    from ssmis.data.h5 import load_h5_case

    h5 = get_layout(layout)(loose_data_config(layout, root))
    try:
        entries = h5.cases()
    except SSMISError as err:
        problems.append(str(err))
        return
    for entry in entries:
        path = h5.train_path(entry.case) if entry.subset == "train" else h5.eval_path(entry.case)
        try:
            image, label = load_h5_case(path, num_classes=None, require_label=True)
        except SSMISError as err:
            problems.append(str(err))
            continue
        yield {"case": entry.case, "subset": entry.subset, "domain": entry.domain,
               "image": image[None], "label": label, "spacing": None}


def _own_cases(catalog: Catalog, reader: CaseReader, problems: list[str]
               ) -> Iterator[dict[str, Any]]:
    for info in catalog.cases.values():
        try:
            reader.spatial_shape(info.case, with_label=info.label is not None)
            arrays = reader.load_raw(info.case, with_label=info.label is not None)
        except SSMISError as err:
            problems.append(str(err))
            continue
        if not np.isfinite(arrays.image).all():
            problems.append(f"{info.images[0]}: image contains NaN/inf values")
        subset = info.subset if info.label is not None or info.subset != "train" \
            else "unlabeled"
        dtype, rng = arrays.source_dtype, arrays.source_range
        if dtype is None and catalog.kind == "nifti":
            from ssmis.data.nifti_io import read_nifti

            dtype = str(read_nifti(info.images[0], header_only=True)[3].get_data_dtype())
        if rng is None:
            rng = (float(np.nanmin(arrays.image)), float(np.nanmax(arrays.image)))
        yield {"case": info.case, "subset": subset, "domain": info.domain,
               "image": arrays.image, "label": arrays.label, "spacing": arrays.spacing,
               "dtype": dtype, "range": rng, "label_file": info.label, "roi": arrays.roi,
               "snapped": arrays.snapped}


def _mask_summary(masks: list[tuple[Path, int, int, set[int]]], mask_values: Any, snap: str,
                  problems: list[str]) -> list[str]:
    """Lines on lossy (JPEG) masks from (mask file, snapped pixels, pixels, label values) of
    each labeled case: how many pixels were snapped, or (no mapping declared) the hint to
    declare their values, appended to ``problems``."""
    from ssmis.data.masks import LOSSY_MASK_EXTS, describe

    lossy = [m for m in masks if m[0].suffix.lower() in LOSSY_MASK_EXTS]
    lines = []
    snapped = [m for m in masks if m[1]]
    if snapped:
        n, pixels = sum(m[1] for m in snapped), sum(m[2] for m in snapped)
        lines.append(f"masks   {n} pixel(s) in {len(snapped)} mask(s) ({100.0 * n / pixels:.2f}% "
                     f"of their pixels) had undeclared values, snapped to the nearest of "
                     f"{describe(mask_values or {})} (data.mask_snap: {snap})")
    elif lossy and mask_values:
        lines.append(f"masks   {len(lossy)} lossy mask(s) ({lossy[0][0].suffix}), every value "
                     f"already one of {describe(mask_values)}")
    if lossy and not mask_values:
        values = set().union(*(m[3] for m in lossy))
        if len(values) > 2:
            folders = sorted({str(m[0].parent) for m in lossy})
            where = folders[0] if len(folders) == 1 else (
                f"{', '.join(folders[:3])}{' ...' if len(folders) > 3 else ''}")
            problems.append(f"{where}: {len(lossy)} lossy mask(s) "
                            f"({lossy[0][0].suffix}) with {len(values)} distinct values: "
                            "declare the classes with --mask-values 0:0,255:1 (lossy values are "
                            "snapped to the nearest) or ranges 0-127:0,128-255:1")
    return lines


def _config_split(data_cfg: Any, problems: list[str], out) -> None:
    """Print the split a config draws (``data.split_file``, else the layout's rule), or add
    why it cannot be drawn to ``problems``; skipped while the files have problems."""
    if problems:
        out("split   not drawn until the problems below are fixed")
        return
    from ssmis.data.splits import Split

    try:
        layout = get_layout(data_cfg.layout)(data_cfg)
        if data_cfg.split_file is not None:
            split = Split.load(data_cfg.split_file)
            layout.check_split(split, str(data_cfg.split_file))
            source = f"data.split_file {data_cfg.split_file}"
        else:
            split = layout.protocol_split()
            seed = layout_option(data_cfg, "split_seed", 0)
            source = (f"data.split_seed {seed}" if isinstance(layout, CatalogLayout)
                      else "the dataset's lists")
    except SSMISError as err:
        problems.append(str(err))
        return
    out(f"split   labeled {len(split.labeled)}, unlabeled {len(split.unlabeled)}, val "
        f"{len(split.val)}, test {len(split.test)} ({source})")


def collapse_problems(problems: list[str], keep: int = 2) -> list[str]:
    """Problems of the form ``<file>: <what>`` that repeat ``<what>`` for many files are
    shown ``keep`` times, then one line counting the others (a folder of masks with one
    setting wrong gives one message, not one per file)."""

    groups: dict[str, list[str]] = {}
    for p in problems:
        what = p.split(": ", 1)[1] if ": " in p else p
        groups.setdefault(re.sub(r"\[[^\]]*\]", "[...]", what), []).append(p)
    lines: list[str] = []
    for what, items in groups.items():
        lines += items[:keep]
        if len(items) > keep:
            lines.append(f"... and {len(items) - keep} more file(s) with the same problem "
                         f"({what})")
    return lines


def inspect_dataset(root: Path | None = None, *, layout: str | None = None,
                    mask_values: Any = None, num_classes: int | None = None,
                    show_all: bool = False, out=print, config: Any = None) -> int:
    """Print what is in a dataset and every problem found; 1 when there is any problem.

    ``config`` (an :class:`~ssmis.config.ExperimentConfig`) supplies the root, layout, folder
    names, patterns, ROI folder, mask mapping, class count and normalisation, so they are
    checked as training would use them, and its split is drawn and counted. Without it the
    layout is detected and ``mask_values`` / ``num_classes`` are the only settings. Per case it
    prints the subset, domain, shape, spacing, the image file's dtype and value range (before
    normalisation) and the label values.
    """
    data_cfg = config.data if config is not None else None
    if data_cfg is not None:
        root, layout = Path(data_cfg.root), data_cfg.layout
        mask_values, num_classes = layout_option(data_cfg, "mask_values"), data_cfg.num_classes
    if root is None:
        raise SSMISError("data inspect: give a dataset folder or --config CONFIG.yaml")
    root = Path(root)
    layout = layout or find_layout(root)
    problems: list[str] = []
    out(f"dataset {root}")
    out(f"layout  {layout}" + ("" if config is None else " (from the config)"))
    expected: set[int] | None = None
    catalog: Catalog | None = None
    reader: Any = None
    snap = "auto"

    if issubclass(get_layout(layout), H5Layout):
        rows: Iterator[dict[str, Any]] = _h5_cases(layout, root, problems)
        stored = get_layout(layout).stored_normalisation
        if stored is not None:
            out(f"normalisation {stored.describe()}")
        if num_classes:
            expected = set(range(num_classes))
    else:
        catalog = scan_catalog(layout, root, data_cfg, problems=problems)
        for line in ignored_lines(catalog, limit=len(catalog.ignored) if show_all else 5):
            out(line)
        if catalog.channel_names:
            out(f"channels {catalog.channel_names}")
        if catalog.label_names:
            out(f"labels  {dict(sorted(catalog.label_names.items()))}")
            # nnU-Net region entries ({"WT": [1, 2, 3]}) declare values without one name
            expected = set(catalog.label_names) | dataset_json_values(catalog.manifest)
        if mask_values:
            expected = {int(c) for c in mask_values.values()}
        elif num_classes:
            expected = set(range(num_classes))
        if data_cfg is not None:
            cfg = data_cfg
            snap = layout_option(cfg, "mask_snap", "auto")
        else:
            cfg = loose_data_config(layout, root, in_channels=_channels_of(catalog),
                                    normalization="auto" if layout == "prepared" else "none",
                                    mask_values=mask_values, num_classes=None)
            cfg.__dict__["num_classes"] = None  # report label values rather than reject them
        reader = get_layout(layout).make_reader(catalog, cfg)
        if data_cfg is not None:
            declared = declared_classes_problem(catalog, num_classes, mask_values)
            if declared is not None:
                problems.append(declared)
        try:
            norm_cfg = cfg if data_cfg is not None else loose_data_config(
                layout, root, in_channels=cfg.in_channels, normalization="auto")
            norm_reader = reader if data_cfg is not None else \
                get_layout(layout).make_reader(catalog, norm_cfg)
            for line in describe_all(norm_reader.normalisation(norm_cfg),
                                     catalog.channel_names):
                out(f"normalisation {line}")
        except SSMISError as err:
            problems.append(str(err))
        rows = _own_cases(catalog, reader, problems)
    counts: Counter[str] = Counter()
    domains: Counter[str] = Counter()
    voxels: Counter[int] = Counter()
    dtypes: Counter[str] = Counter()
    header = f"{'case':<28} {'subset':<9} {'domain':<10} {'shape':<18} {'spacing':<14} " \
             f"{'dtype':<8} {'values':<20} labels"
    masks: list[tuple[Path, int, int, set[int]]] = []
    low, high = np.inf, -np.inf
    normalised = False  # a row without the file's own range shows the reader's output
    shown = 0
    for shown, row in enumerate(rows):  # noqa: B007 (used after the loop)
        counts[row["subset"]] += 1
        if row["domain"] is not None:
            domains[str(row["domain"])] += 1
        image, label = row["image"], row["label"]
        values = ""
        if label is not None:
            scored = label if row.get("roi") is None else label[row["roi"]]
            uniq, n = np.unique(scored, return_counts=True)
            voxels.update({int(u): int(c) for u, c in zip(uniq, n, strict=True)})
            label_values = [int(u) for u in np.unique(label)]
            values = " ".join(str(u) for u in label_values)
            if len(values) > 40:
                values = values[:37] + "..."
            if expected is not None:
                bad = sorted(u for u in label_values if u not in expected)
                if bad:
                    problems.append(f"case '{row['case']}': unexpected label value(s) "
                                    f"{bad[:12]}, expected {sorted(expected)}")
        normalised = normalised or (row.get("range") is None and data_cfg is not None)
        rng = row.get("range") or (float(np.nanmin(image)), float(np.nanmax(image)))
        low, high = min(low, rng[0]), max(high, rng[1])
        dtype = row.get("dtype") or str(image.dtype)
        dtypes[dtype] += 1
        if row.get("label_file") is not None and label is not None:
            masks.append((row["label_file"], row["snapped"], int(label.size),
                          set(label_values)))
        if shown == 0:
            out(header)
        if show_all or shown < _PREVIEW:
            spacing = "x".join(f"{s:g}" for s in row["spacing"]) if row["spacing"] else "-"
            shape = "x".join(str(s) for s in image.shape[1:])
            if image.shape[0] > 1:
                shape += f" ({image.shape[0]}ch)"
            if row.get("roi") is not None:
                shape += " roi"
            out(f"{row['case']:<28} {row['subset']:<9} {str(row['domain'] or '-'):<10} "
                f"{shape:<18} {spacing:<14} {dtype:<8} {f'[{rng[0]:.4g}, {rng[1]:.4g}]':<20} "
                f"{values}")
        elif shown == _PREVIEW:
            out("... (more cases; --all lists every one)")
    total = sum(counts.values())
    out(f"cases   {total}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if domains:
        out("domains " + ", ".join(f"{k} ({v})" for k, v in sorted(domains.items())))
    if dtypes:
        out("images  " + ", ".join(f"{k} ({v})" for k, v in sorted(dtypes.items()))
            + f", values {low:.6g}..{high:.6g} "
            + ("after data.normalization" if normalised
               else "in the files (before normalisation)"))
        ints = sorted(k for k in dtypes if np.dtype(k).kind in "iu")
        if catalog is not None and catalog.kind == "images" and len(ints) > 1:
            maxima = ", ".join(f"{np.iinfo(np.dtype(k)).max}" for k in ints)
            problems.append(f"{root}: images mix {' and '.join(ints)} files: normalization "
                            f"scale divides each by its type's maximum ({maxima}), so the same "
                            "tissue gets different intensities; convert them to one bit depth "
                            "or set data.normalization: zscore")
    if catalog is not None:  # h5 layouts keep patients together in their list files
        from ssmis.data.splits import grouping_note

        note = grouping_note(list(catalog.cases), layout_option(data_cfg, "group_by", "auto"))
        if note is not None:
            out(f"warning: {note}")
    if voxels:
        n = sum(voxels.values())
        roi_note = " inside the ROI" if catalog is not None and any(
            c.roi is not None for c in catalog.cases.values()) else ""
        shares = [f"{k}: {100.0 * v / n:.2f}%" for k, v in sorted(voxels.items())]
        if len(shares) > 16:
            shares = shares[:8] + [f"... ({len(shares) - 16} more values)"] + shares[-8:]
        out("classes " + ", ".join(shares) + f" (voxels of labeled cases{roi_note})")
        if data_cfg is not None and num_classes:
            absent = [k for k in range(1, num_classes) if not voxels.get(k)]
            if absent:
                names = data_cfg.names()
                problems.append(f"data.num_classes: {num_classes}, but class(es) "
                                + ", ".join(f"{k} ({names[k]})" for k in absent)
                                + " occur in no label of the dataset; check data.num_classes"
                                " and data.mask_values")
    for line in _mask_summary(masks, mask_values, snap, problems):
        out(line)
    if reader is not None and getattr(reader, "resampled", None):

        for line in resample_notes(reader.resampled):
            out(line)
    if data_cfg is not None:
        _config_split(data_cfg, problems, out)
    if problems:
        out(f"problems ({len(problems)}):")
        for p in collapse_problems(problems):
            out(f"  {p}")
        return 1
    out("problems: none")
    return 0


# --------------------------------------------------------------------------- split / prepare


def data_config_for(path: Path, overrides: list[str] | None = None, **fields: Any
                    ) -> tuple[DataConfig, Any]:
    """(data config, full config or None) from an experiment YAML or a dataset folder."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        from ssmis.experiment import load_config

        cfg = load_config(path, overrides or [])
        return cfg.data, cfg

    layout = find_layout(path)
    if not issubclass(get_layout(layout), CatalogLayout):
        raise SSMISError(f"{path}: {layout} datasets come with their split lists; give an "
                         "experiment YAML to write their split")
    catalog = scan_catalog(layout, path)
    fields.setdefault("in_channels", _channels_of(catalog))
    return loose_data_config(layout, path, **fields), None


def write_split(path: Path, out: Path, overwrite: bool = False,
                overrides: list[str] | None = None, **fields: Any) -> Path:
    from ssmis.data.splits import split_from_catalog

    out = Path(out)
    if out.exists() and not overwrite:
        raise SSMISError(f"{out}: exists (use --overwrite)")
    data, cfg = data_config_for(path, overrides, **fields)
    if cfg is not None:
        from ssmis.engine.data import build_split

        split = build_split(cfg)
    else:

        if get_layout(data.layout).protocol_split is not CatalogLayout.protocol_split:
            raise SSMISError(f"{path}: {data.layout} datasets have their own protocol split; "
                             "give an experiment YAML to write it")
        if (data.params.labeled_count is None) == (data.params.labeled_fraction is None) \
                and not data.params.labeled_cases:
            raise SSMISError("--labeled: give a count (4) or a fraction (0.1), or "
                             "--labeled-cases")
        if data.params.val_count is None and data.params.val_fraction is None:
            raise SSMISError("--val: give a count (2) or a fraction (0.2)")
        split = split_from_catalog(scan_catalog(data.layout, data.root, data), data)
    out.parent.mkdir(parents=True, exist_ok=True)
    split.save(out)
    return out


def prepare(path: Path, out: Path, overrides: list[str] | None = None, **fields: Any) -> Path:
    from ssmis.data.layouts.prepared import prepare_dataset

    data, _ = data_config_for(path, overrides, **fields)
    cls = get_layout(data.layout)
    if not issubclass(cls, CatalogLayout) or data.layout == "prepared":
        raise SSMISError(f"{data.root}: prepare converts folder datasets (nifti, images, hrf, "
                         f"...), not {data.layout}")
    catalog = scan_catalog(data.layout, data.root, data)
    return prepare_dataset(catalog, data, Path(out), reader=cls.make_reader(catalog, data))
