"""Your own data: NIfTI folders in the nnU-Net layout, 2D image/mask folders, prepared caches.

* ``nifti`` (nnU-Net): ``imagesTr/<case>_0000.nii.gz`` (one file per channel), ``labelsTr/<case>
  .nii.gz``, optional ``imagesTs/`` (+ ``labelsTs/``), optional ``imagesUnlabeled/`` and a
  ``dataset.json`` with ``channel_names``, ``labels`` and ``file_ending`` (and, an ssmis
  extension, ``domains``: case -> domain). A training image without a label is unlabeled.
  Arrays stay in the file's voxel order; spacing comes from the header, the affine is kept so
  that predictions are written with the input's geometry.
* ``images``: ``images/`` + ``masks/`` + optional ``unlabeled/`` (and an optional ROI folder,
  ``data.roi_dir``), either directly under the root or inside one folder per domain (hospital,
  scanner); folders named ``train``/``training`` and ``test``/``testing`` are subsets, not
  domains. Image, mask and ROI files are paired by the ``{id}`` of ``data.image_pattern`` /
  ``mask_pattern`` / ``roi_pattern`` (default: the same file stem; DRIVE: ``{id}_*`` /
  ``{id}_manual1`` / ``{id}_*_mask``). Palette PNG/GIF masks are read as their indices; mask
  pixel values are mapped to classes by ``data.mask_values`` (``{0: 0, 255: 1}`` or ranges
  ``0-127:0,128-255:1``, :mod:`ssmis.data.masks`), lossy (JPEG) masks snapped to the nearest
  declared value.
* ``prepared``: the output of ``ssmis data prepare``: one compressed ``.npz`` per case (float16
  normalised image, uint8 label) and a manifest, so training does not decode NIfTI/JPEG.

Every problem a user can fix is an :class:`~ssmis.errors.SSMISError` naming the file. Scanning
with a ``problems`` list collects them instead (``ssmis data inspect``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssmis.atomic import atomic_write, write_json
from ssmis.data.h5 import _label_to_int
from ssmis.data.masks import LOSSY_MASK_EXTS, describe, lookup_classes, normalize_mask_values
from ssmis.data.normalisation import ChannelNorm, normalize, type_divisor
from ssmis.errors import SSMISError

NIFTI_ENDINGS = (".nii.gz", ".nii")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
#: folders of an images dataset that name a subset rather than a domain (DRIVE: training/, test/)
#: (subset, case-id prefix); a shipped validation folder joins the training pool, from which
#: the split draws its own validation cases
SUBSET_FOLDERS = {"train": ("train", ""), "training": ("train", ""), "test": ("test", "test/"),
                  "testing": ("test", "test/"), "val": ("train", "val/"),
                  "valid": ("train", "val/"), "validation": ("train", "val/")}
PREPARED_MANIFEST = "ssmis_prepared.json"
PREPARED_FORMAT = "ssmis-prepared-1"
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


@dataclass
class CaseInfo:
    """One case on disk: its channel files, label file (None = unlabeled), domain, subset, and
    its region-of-interest mask file (field of view; None = the whole image is scored)."""

    case: str
    images: list[Path]
    label: Path | None
    domain: str | None = None
    subset: str = "train"  # train | test | unlabeled
    shape: tuple[int, ...] | None = None  # known without reading (prepared manifest)
    roi: Path | None = None


@dataclass
class Catalog:
    layout: str
    root: Path
    cases: dict[str, CaseInfo]
    channel_names: list[str] = field(default_factory=list)
    label_names: dict[int, str] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    #: how :class:`CaseReader` decodes the files: nifti | images | prepared (default: layout)
    kind: str = ""
    #: (path, reason) of the entries in the dataset's folders that no case uses
    ignored: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.kind = self.kind or self.layout

    def get(self, case: str) -> CaseInfo:
        if case not in self.cases:
            raise SSMISError(f"case '{case}' is not in {self.root} ({self.layout} layout)")
        return self.cases[case]

    def ids(self, subset: str, labeled: bool | None = None) -> list[str]:
        return [c.case for c in self.cases.values() if c.subset == subset
                and (labeled is None or (c.label is not None) == labeled)]

    def domains(self) -> dict[str, str | None]:
        return {c.case: c.domain for c in self.cases.values()}


@dataclass
class CaseArrays:
    """A loaded case: image (C, *spatial) float32, label (*spatial) int64 or None.

    ``roi`` (*spatial) bool marks the pixels that are scored (None: all); ``source_dtype`` and
    ``source_range`` (min, max) describe the image file's values before normalisation;
    ``snapped`` counts the mask pixels whose value was not a declared one and was snapped to
    the nearest (lossy masks, ``data.mask_snap``).
    """

    case: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, ...] | None
    affine: np.ndarray | None = None
    domain: str | None = None
    roi: np.ndarray | None = None
    source_dtype: str | None = None
    source_range: tuple[float, float] | None = None
    snapped: int = 0


def _problem(problems: list[str] | None, message: str) -> None:
    if problems is None:
        raise SSMISError(message)
    problems.append(message)


def strip_ending(name: str, endings: Sequence[str]) -> str | None:
    low = name.lower()
    for ending in endings:
        if low.endswith(ending):
            return name[: len(name) - len(ending)]
    return None


# --------------------------------------------------------------------------- layout detection


def detect_layout(root: Path, images_dir: str = "images") -> str:
    """The registered layout (:mod:`ssmis.data.layouts`) whose marker files are under ``root``.

    Raises:
        SSMISError: ``root`` is missing, a file, or matches no layout.
    """
    from ssmis.data.layouts import detect_layout as detect

    root = Path(root)
    if root.is_file():
        raise SSMISError(f"{root}: expected a dataset folder, got a file")
    if not root.is_dir():
        raise SSMISError(f"{root}: folder not found")
    found = detect(root)
    if found is None and images_dir != "images" and (
            (root / images_dir).is_dir()
            or any((d / images_dir).is_dir() for d in root.iterdir() if d.is_dir())):
        found = "images"
    if found is None:
        from ssmis.data.layouts import LAYOUTS

        raise SSMISError(f"{root}: unknown dataset layout (expected one of the registered "
                         f"layouts: {', '.join(sorted(LAYOUTS))}; `ssmis data layouts` says "
                         "how each stores a dataset)")
    return found


def scan(layout: str, root: Path, data_cfg: Any = None,
         problems: list[str] | None = None) -> Catalog:
    """Catalog of the cases under ``root`` by the registered layout ``layout`` (a
    :class:`~ssmis.data.layouts.CatalogLayout`); ``data_cfg`` supplies folder names.

    Raises:
        SSMISError: ``root`` is not a folder, or the layout has no case catalog.
    """
    from ssmis.data.layouts import CatalogLayout, get_layout

    root = Path(root)
    if not root.is_dir():
        raise SSMISError(f"data.root: folder {root} not found")
    cls = get_layout(layout)
    if not issubclass(cls, CatalogLayout):
        raise SSMISError(f"layout '{layout}' has no case catalog")
    return cls.scan(root, data_cfg, problems)


# --------------------------------------------------------------------------- nnU-Net NIfTI


def _read_dataset_json(root: Path) -> dict[str, Any]:
    path = root / "dataset.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SSMISError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SSMISError(f"{path}: expected a JSON object")
    return data


def dataset_json_channels(meta: dict[str, Any], path: Path) -> list[str]:
    """Channel names of a ``dataset.json`` in channel order: nnU-Net v2 ``channel_names`` or
    v1/MSD ``modality``. Keys that are all channel indices ("0", "1") are ordered by number;
    other keys (``{"CT": "CT"}``) by their order in the file, as nnU-Net takes the values.

    Raises:
        SSMISError: the entry is not an object of strings, naming ``path``.
    """
    key = "channel_names" if "channel_names" in meta else "modality"
    raw = meta.get(key)
    if raw is None:
        return []
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise SSMISError(f"{path}: '{key}' must map channels to names ({{\"0\": \"CT\"}}), "
                         f"got {raw!r}")
    items = list(raw.items())
    if all(str(k).strip().isdigit() for k, _ in items):
        items.sort(key=lambda kv: int(kv[0]))
    return [str(v) for _, v in items]


def dataset_json_labels(meta: dict[str, Any], path: Path) -> dict[int, str]:
    """Label value -> name of a ``dataset.json``: nnU-Net v2 ``{"background": 0, "LA": 1}``
    (region lists ``{"WT": [1, 2, 3]}`` name no single value), or v1/MSD ``{"0":
    "background", "1": "LA"}``.

    Raises:
        SSMISError: an entry that is neither form, naming ``path``.
    """
    raw = meta.get("labels") or {}
    if not isinstance(raw, dict):
        raise SSMISError(f"{path}: 'labels' must be an object, got {raw!r}")
    names: dict[int, str] = {}
    for key, value in raw.items():
        if isinstance(value, bool):
            pass
        elif isinstance(value, int):
            names[value] = str(key)
            continue
        elif isinstance(value, list) and all(isinstance(v, int) for v in value):
            continue
        elif isinstance(value, str) and str(key).strip().isdigit():
            names[int(key)] = value
            continue
        raise SSMISError(f"{path}: labels entry {key!r}: {value!r} is neither nnU-Net v2 "
                         "(name: value) nor v1 (\"value\": name)")
    return names


def dataset_json_values(meta: dict[str, Any]) -> set[int]:
    """Every label value a ``dataset.json`` declares (v2 values and regions, v1 keys)."""
    out: set[int] = set()
    for key, value in (meta.get("labels") or {}).items():
        if isinstance(value, int) and not isinstance(value, bool):
            out.add(value)
        elif isinstance(value, list):
            out.update(int(v) for v in value if isinstance(v, int))
        elif str(key).strip().isdigit():
            out.add(int(key))
    return out


def _file_ending(meta: dict[str, Any], path: Path) -> str:
    """``file_ending`` of a dataset.json (default .nii.gz); ssmis reads NIfTI only.

    Raises:
        SSMISError: another ending (.mha, .nrrd, .png), naming ``path``.
    """
    ending = str(meta.get("file_ending", ".nii.gz"))
    if ending.lower() not in NIFTI_ENDINGS:
        raise SSMISError(f"{path}: file_ending '{ending}': the nifti layout reads .nii.gz and "
                         ".nii files; convert the files (2D pictures: data.layout: images)")
    return ending


#: the entries of a nifti dataset's root that the layout reads
NIFTI_ENTRIES = ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "imagesUnlabeled",
                 "dataset.json")


def _ignore(catalog: Catalog, path: Path, reason: str) -> None:
    catalog.ignored.append((str(path), reason))


def _nifti_folder(folder: Path, catalog: Catalog, problems: list[str] | None
                  ) -> dict[str, dict[int, Path]]:
    """``<case>_<XXXX>.nii[.gz]`` files of a folder grouped by case -> {channel: path}; every
    other entry is recorded in ``catalog.ignored`` with the reason."""
    cases: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            _ignore(catalog, path, "hidden file")
            continue
        stem = strip_ending(path.name, NIFTI_ENDINGS)
        if not path.is_file():
            _ignore(catalog, path, "a folder inside an image folder (not read)")
            continue
        if stem is None:
            _ignore(catalog, path, "not a NIfTI file (.nii.gz, .nii)")
            continue
        match = _CHANNEL.match(stem)
        if match is None:
            _problem(problems, f"{path}: image name must end in _0000.nii.gz (channel index, "
                               "nnU-Net naming)")
            continue
        channels = cases.setdefault(match["case"], {})
        channel = int(match["ch"])
        if channel in channels:
            _problem(problems, f"{path}: channel {channel} of case '{match['case']}' also in "
                               f"{channels[channel].name}; keep one file")
            continue
        channels[channel] = path
    return cases


def _label_files(folder: Path, catalog: Catalog, problems: list[str] | None
                 ) -> dict[str, Path]:
    """{case: label file} of a labels folder, any NIfTI ending. A case's label in another
    format (``.mha``, ``.nrrd``, ``.png``) or in two files is a problem naming the file: a
    label that exists is never read as 'no label'."""
    labels: dict[str, Path] = {}
    if not folder.is_dir():
        return labels
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            _ignore(catalog, path, "hidden file")
            continue
        if not path.is_file():
            _ignore(catalog, path, "a folder inside a label folder (not read)")
            continue
        stem = strip_ending(path.name, NIFTI_ENDINGS)
        if stem is None:
            _problem(problems, f"{path}: label file in a format the nifti layout does not read "
                               "(expected .nii.gz or .nii); convert it")
            continue
        if stem in labels:
            _problem(problems, f"{path}: second label file of case '{stem}' (also "
                               f"{labels[stem].name}); keep one")
            continue
        labels[stem] = path
    return labels


def scan_nifti(root: Path, problems: list[str] | None = None) -> Catalog:
    """Catalog of an nnU-Net folder (v1 or v2 ``dataset.json``; ``.nii.gz`` and ``.nii`` files
    alike). Entries the layout does not read are listed in ``Catalog.ignored`` with the reason.

    Raises:
        SSMISError: no ``imagesTr/``, a dataset.json nnU-Net would not read, or (without
            ``problems``) the first problem found.
    """
    meta = _read_dataset_json(root)
    meta_path = root / "dataset.json"
    _file_ending(meta, meta_path)
    channel_names = dataset_json_channels(meta, meta_path)
    label_names = dataset_json_labels(meta, meta_path)
    domains = meta.get("domains") or {}
    if not (root / "imagesTr").is_dir():
        raise SSMISError(f"{root}: no imagesTr/ folder (nnU-Net layout)")
    catalog = Catalog("nifti", root, {}, channel_names, label_names, meta)
    for entry in sorted(root.iterdir()):
        if entry.name not in NIFTI_ENTRIES:
            _ignore(catalog, entry, "not part of the nifti layout (reads "
                                    f"{', '.join(NIFTI_ENTRIES)})")
    for images_dir, labels_dir, subset in (("imagesTr", "labelsTr", "train"),
                                           ("imagesTs", "labelsTs", "test"),
                                           ("imagesUnlabeled", None, "unlabeled")):
        folder = root / images_dir
        if not folder.is_dir():
            continue
        labels = _label_files(root / labels_dir, catalog, problems) if labels_dir else {}
        for case, channels in _nifti_folder(folder, catalog, problems).items():
            expected = len(channel_names) or len(channels)
            if sorted(channels) != list(range(expected)):
                got = ", ".join(p.name for _, p in sorted(channels.items()))
                _problem(problems, f"{folder}: case '{case}' has channel files [{got}], "
                                   f"expected _0000.._{expected - 1:04d}")
                continue
            if case in catalog.cases:
                _problem(problems, f"{folder}: case '{case}' also in "
                                   f"{catalog.cases[case].images[0].parent.name}/")
                continue
            catalog.cases[case] = CaseInfo(case, [channels[k] for k in sorted(channels)],
                                           labels.get(case), domains.get(case), subset)
        for stem, path in labels.items():
            if stem not in catalog.cases or catalog.cases[stem].subset != subset:
                _problem(problems, f"{path}: label without an image "
                                   f"({images_dir}/{stem}_0000.nii.gz)")
    if not catalog.cases:
        _problem(problems, f"{root / 'imagesTr'}: no images named <case>_0000.nii.gz")
    return catalog


def declared_classes_problem(catalog: Catalog, num_classes: int | None, mask_values: Any
                             ) -> str | None:
    """One line when the ``dataset.json`` labels declare another class count than
    ``data.num_classes`` (values 0..k give k + 1 classes); None when they agree, when nothing
    is declared or when ``data.mask_values`` maps the label values."""
    values = dataset_json_values(catalog.manifest) if catalog.kind == "nifti" else set()
    if not values or num_classes is None or mask_values is not None:
        return None
    declared = max(values) + 1
    if declared == num_classes:
        return None
    return (f"{catalog.root / 'dataset.json'}: labels declare {declared} classes (values "
            f"{sorted(values)}), data.num_classes = {num_classes}")


def ignored_lines(catalog: Catalog, limit: int = 5) -> list[str]:
    """Lines naming the entries of a dataset folder that the layout does not read, with the
    reason (``ssmis data inspect`` and the run log); empty when every entry is used."""
    if not catalog.ignored:
        return []
    lines = [f"not read: {path} ({why})" for path, why in catalog.ignored[:limit]]
    if len(catalog.ignored) > limit:
        lines.append(f"not read: ... and {len(catalog.ignored) - limit} more entries")
    return lines


# --------------------------------------------------------------------------- image folders


class NamePattern:
    """How a file stem carries the case id: ``{id}`` plus literal text and ``*`` wildcards
    (``{id}_training``, ``{id}_*``), or a regular expression with a group ``(?P<id>...)``.

    Raises SSMISError naming ``field`` when the pattern has no (or two) ``{id}`` or is not a
    valid regular expression.
    """

    def __init__(self, text: str = "{id}", field: str = "data.image_pattern") -> None:
        self.text, self.field = text, field
        if "(?P<id>" in text:
            try:
                self.regex = re.compile(text)
            except re.error as exc:
                raise SSMISError(f"{field}: '{text}' is not a valid regular expression "
                                 f"({exc})") from None
            return
        if text.count("{id}") != 1:
            raise SSMISError(f"{field}: '{text}' must contain '{{id}}' once (e.g. "
                             "'{id}_training'), or be a regular expression with (?P<id>...)")
        parts = [re.escape(p).replace(r"\*", ".*") for p in text.split("{id}")]
        self.regex = re.compile(parts[0] + "(?P<id>.+?)" + parts[1])

    def id_of(self, stem: str) -> str | None:
        """The case id in a file stem, or None when the stem does not match."""
        match = self.regex.fullmatch(stem)
        return match["id"] if match else None

    def name_for(self, case_id: str) -> str:
        """A readable file stem for ``case_id`` (for messages)."""
        if "(?P<id>" in self.text:
            return f"<a name matching {self.text} with id {case_id}>"
        return self.text.replace("{id}", case_id)


def _image_files(folder: Path, pattern: NamePattern | None = None,
                 problems: list[str] | None = None, any_name: bool = False,
                 ignored: list[tuple[str, str]] | None = None) -> dict[str, Path]:
    """{case id: file} of the picture files (``IMAGE_EXTS``) in ``folder`` ({} if missing).

    ``pattern`` (default: the whole stem) gives the id; a file that does not match it is a
    problem unless ``any_name`` (then its stem is the id), and so is a second file with the
    same id. Hidden files, folders and files of other types are appended to ``ignored`` with
    the reason.
    """
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.iterdir()):
        reason = ("hidden file" if path.name.startswith(".") else
                  "a folder inside an image folder (not read)" if not path.is_file() else
                  f"not a picture ({', '.join(IMAGE_EXTS)})"
                  if path.suffix.lower() not in IMAGE_EXTS else None)
        if reason is not None:
            if ignored is not None:
                ignored.append((str(path), reason))
            continue
        key = path.stem if pattern is None else pattern.id_of(path.stem)
        if key is None and pattern is not None and not any_name:
            _problem(problems, f"{path}: name does not match {pattern.field} '{pattern.text}'")
            continue
        key = key or path.stem
        if key in out:
            _problem(problems, f"{path}: case id '{key}' also names {out[key].name}; keep one "
                               "file per case in a folder")
            continue
        out[key] = path
    return out


def scan_images_options(data_cfg: Any) -> dict[str, Any]:
    """The :func:`scan_images` keyword arguments a DataConfig sets (folders, name patterns,
    ROI folders); fields the config does not have keep their defaults."""
    names = ("images_dir", "masks_dir", "unlabeled_dir", "test_images_dir", "test_masks_dir",
             "image_pattern", "mask_pattern", "roi_dir", "roi_pattern", "test_roi_dir")
    return {n: getattr(data_cfg, n) for n in names if getattr(data_cfg, n, None) is not None}


def scan_images(root: Path, images_dir: str = "images", masks_dir: str = "masks",
                unlabeled_dir: str = "unlabeled", problems: list[str] | None = None,
                test_images_dir: str | None = None, test_masks_dir: str | None = None,
                *, image_pattern: str = "{id}", mask_pattern: str = "{id}",
                roi_dir: str | None = None, roi_pattern: str = "{id}",
                test_roi_dir: str | None = None) -> Catalog:
    """Catalog of an ``images`` dataset (layout in the module docstring).

    ``root`` holds ``images_dir`` directly, or in one folder per domain; folders named
    ``train``/``training`` hold training cases, ``test``/``testing`` labeled test cases
    (ids ``test/<id>``) and ``val``/``valid``/``validation`` training cases (ids ``val/<id>``),
    without a domain (:data:`SUBSET_FOLDERS`). Files are paired by the id of the patterns
    (:class:`NamePattern`); ``roi_dir`` (beside ``masks_dir``) holds one ROI mask per image.
    ``test_images_dir`` / ``test_masks_dir`` / ``test_roi_dir``: labeled test images inside each
    folder (ids ``[<domain>/]test/<id>``). Every user-fixable problem raises SSMISError naming
    the file, or is appended to ``problems`` when given.
    """
    root = Path(root)
    pats = {"image": NamePattern(image_pattern, "data.image_pattern"),
            "mask": NamePattern(mask_pattern, "data.mask_pattern"),
            "roi": NamePattern(roi_pattern, "data.roi_pattern")}
    groups: list[tuple[str | None, str, Path, str]] = []  # (domain, subset, folder, id prefix)
    top = (root / images_dir).is_dir()  # then only subset folders beside it (root/test/images)
    if top:
        groups.append((None, "train", root, ""))
    for d in sorted(root.iterdir()):
        if d.is_dir() and (d / images_dir).is_dir():
            named = SUBSET_FOLDERS.get(d.name.lower())
            if named is not None:
                groups.append((None, named[0], d, named[1]))
            elif not top:
                groups.append((d.name, "train", d, f"{d.name}/"))
    if not groups:
        raise SSMISError(f"{root}: no {images_dir}/ folder (directly or in one folder per "
                         "domain)")
    catalog = Catalog("images", root, {})
    for field_name, sub in (("data.test_images_dir", test_images_dir),
                            ("data.test_masks_dir", test_masks_dir),
                            ("data.roi_dir", roi_dir), ("data.test_roi_dir", test_roi_dir)):
        if sub is not None and not any((g[2] / sub).is_dir() for g in groups):
            _problem(problems, f"{field_name}: no folder '{sub}' in {root}"
                               + (" or its domain folders" if groups[0][0] else ""))
    read = {Path(n).parts[0] for n in (images_dir, masks_dir, unlabeled_dir, roi_dir,
                                        test_images_dir, test_masks_dir, test_roi_dir) if n}
    used_top = {g[2].name for g in groups if g[2] != root} | (read if top else set())
    _note_unused(root, used_top, catalog.ignored,
                 "not an images/masks folder of the layout, a domain or a subset folder")
    for domain, subset, folder, prefix in groups:
        if folder != root:
            _note_unused(folder, read, catalog.ignored, "not one of the layout's folders ("
                         + ", ".join(sorted(n for n in read if n)) + ")")
        unlabeled = (_image_files(folder / unlabeled_dir, pats["image"], problems, any_name=True,
                                  ignored=catalog.ignored)
                     if subset == "train" else {})
        rois = _scan_image_group(catalog, domain, subset, prefix, folder / images_dir,
                                 folder / masks_dir, folder / roi_dir if roi_dir else None,
                                 pats, problems, set(unlabeled))
        if subset == "train":
            for key, path in unlabeled.items():
                case = prefix + key
                if case in catalog.cases:
                    _problem(problems, f"{path}: '{key}' is also a labeled image")
                    continue
                catalog.cases[case] = CaseInfo(case, [path], None, domain, "unlabeled",
                                               roi=rois.get(key))
        if test_images_dir is not None and test_masks_dir is not None \
                and (folder / test_images_dir).is_dir():
            _scan_image_group(catalog, domain, "test", prefix + "test/",
                              folder / test_images_dir, folder / test_masks_dir,
                              folder / test_roi_dir if test_roi_dir else None, pats, problems)
    if not catalog.cases and not problems:
        _problem(problems, f"{root}: no images ({', '.join(IMAGE_EXTS)}) in {images_dir}/")
    return catalog


def _note_unused(folder: Path, used: set[str], ignored: list[tuple[str, str]], reason: str
                 ) -> None:
    """Append the entries of ``folder`` whose names are not in ``used`` to ``ignored``."""
    for entry in sorted(folder.iterdir()):
        if entry.name not in used:
            ignored.append((str(entry), "hidden file" if entry.name.startswith(".") else reason))


def _missing_masks(missing: list[Path], images: dict[str, Path], masks: dict[str, Path],
                   masks_folder: Path, pattern: NamePattern, what: str, hint: str) -> str:
    """One problem line for the images of a folder without a mask: the count, one example
    and, when no image found one, how the masks there are named."""
    first = missing[0]
    key = next(k for k, p in images.items() if p == first)
    example = f"{first.name} -> {masks_folder}/{pattern.name_for(key)}.*"
    if len(missing) == 1:
        return f"{first}: no {what} {masks_folder}/{pattern.name_for(key)}.*{hint}"
    if len(missing) == len(images) and masks:
        seen = next(iter(masks.values())).name
        return (f"{masks_folder}: none of the {len(images)} images of {first.parent} has a "
                f"{what} named by {pattern.field} '{pattern.text}' (e.g. {example}); the "
                f"{what}s there are named like {seen}: set {pattern.field}")
    return (f"{masks_folder}: {len(missing)} of the {len(images)} images of {first.parent} "
            f"have no {what} (e.g. {example}){hint}")


def _scan_image_group(catalog: Catalog, domain: str | None, subset: str, prefix: str,
                      images_folder: Path, masks_folder: Path, roi_folder: Path | None,
                      pats: dict[str, NamePattern], problems: list[str] | None,
                      other_ids: set[str] | frozenset[str] = frozenset()) -> dict[str, Path]:
    """The labeled images of one folder (training or test), paired with masks and ROIs;
    returns the ROI files by id (``other_ids``: unlabeled images that may have one too)."""
    images = _image_files(images_folder, pats["image"], problems, ignored=catalog.ignored)
    what = "test mask" if subset == "test" else "mask"
    if not masks_folder.is_dir():
        if images:
            hint = "" if subset == "test" else ", or put unlabeled images in unlabeled/"
            _problem(problems, f"{masks_folder}: folder not found, the {len(images)} image(s) "
                               f"in {images_folder} have no {what}s: set data.masks_dir (and "
                               f"data.mask_pattern for other file names; `ssmis data inspect "
                               f"--config CONFIG.yaml` checks them){hint}")
        return {}
    masks = _image_files(masks_folder, pats["mask"], problems, ignored=catalog.ignored)
    rois: dict[str, Path] = {}
    if roi_folder is not None:
        if roi_folder.is_dir():
            rois = _image_files(roi_folder, pats["roi"], problems, ignored=catalog.ignored)
        elif images:
            _problem(problems, f"{roi_folder}: ROI folder not found (data.roi_dir)")
            return {}
    missing = [path for key, path in images.items() if key not in masks]
    if missing:
        hint = " (put unlabeled images in unlabeled/)" if subset == "train" else ""
        _problem(problems, _missing_masks(missing, images, masks, masks_folder, pats["mask"],
                                          what, hint))
    for key, path in images.items():
        mask = masks.get(key)
        if mask is None:
            continue
        roi = rois.get(key)
        if roi_folder is not None and roi is None:
            _problem(problems, f"{path}: no ROI mask {roi_folder}/{pats['roi'].name_for(key)}.*")
            continue
        if prefix + key in catalog.cases:
            _problem(problems, f"{path}: case id '{prefix + key}' also names "
                               f"{catalog.cases[prefix + key].images[0]}")
            continue
        catalog.cases[prefix + key] = CaseInfo(prefix + key, [path], mask, domain, subset,
                                               roi=roi)
    for key, path in masks.items():
        if key not in images:
            _problem(problems, f"{path}: mask without an image in {images_folder}/ (case id "
                               f"'{key}', {pats['image'].field} '{pats['image'].text}')")
    for key, path in rois.items():
        if key not in images and key not in other_ids:
            _problem(problems, f"{path}: ROI mask without an image in {images_folder}/")
    return rois


# --------------------------------------------------------------------------- prepared


def case_file_name(case: str) -> str:
    return case.replace("/", "__") + ".npz"


def scan_prepared(root: Path) -> Catalog:
    path = root / PREPARED_MANIFEST
    if not path.is_file():
        raise SSMISError(f"{path}: not found (create it with `ssmis data prepare`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        assert manifest.get("format") == PREPARED_FORMAT
        cases = {
            c["case"]: CaseInfo(c["case"], [root / "cases" / c["file"]],
                                root / "cases" / c["file"] if c["label"] else None,
                                c.get("domain"), c["subset"], tuple(c["shape"]))
            for c in manifest["cases"]
        }
    except Exception as exc:
        raise SSMISError(f"{path}: not a valid prepared-dataset manifest ({exc})") from None
    return Catalog("prepared", root, cases, manifest.get("channel_names", []),
                   {int(k): v for k, v in manifest.get("label_names", {}).items()}, manifest)


# --------------------------------------------------------------------------- readers


def read_nifti(path: Path, header_only: bool = False):
    """(array or None, spacing, affine, image object) of a NIfTI file; errors name the file."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise SSMISError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        data = None if header_only else np.asanyarray(img.dataobj)
    except Exception as exc:  # ImageFileError, EOFError, zlib.error, OSError, ValueError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SSMISError(f"{path}: not a readable NIfTI file ({reason})") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
        data = data[..., 0] if data is not None else None
    if len(shape) not in (2, 3):
        raise SSMISError(f"{path}: shape {shape}, expected a 2D or 3D volume (one channel per "
                         "file, nnU-Net naming _0000, _0001, ...)")
    spacing = tuple(float(z) for z in img.header.get_zooms()[: len(shape)])
    return data, spacing, np.asarray(img.affine, dtype=np.float64), img


def _grid(img: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """(spacing mm, origin mm, direction cosines 3x3, orientation codes) of a NIfTI header."""
    import nibabel as nib

    affine = np.asarray(img.affine, dtype=np.float64)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    direction = affine[:3, :3] / np.where(spacing > 0, spacing, 1.0)
    return spacing, affine[:3, 3], direction, tuple(nib.aff2axcodes(affine))


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def grid_difference(reference: Any, other: Any) -> str | None:
    """How the voxel grid of NIfTI image ``other`` differs from ``reference`` (both nibabel
    images, headers only), or None when they agree: orientation (axis codes), spacing (mm,
    relative tolerance 1e-3), origin (mm, tolerance 1e-3 of the smallest voxel size) and
    direction cosines (tolerance 1e-3). Shapes are compared elsewhere."""
    sp_r, or_r, dir_r, ax_r = _grid(reference)
    sp_o, or_o, dir_o, ax_o = _grid(other)
    n = min(len(reference.shape), len(other.shape), 3)
    parts = []
    if ax_r != ax_o:
        parts.append(f"orientation {''.join(ax_o)} vs {''.join(ax_r)}")
    elif not np.allclose(dir_r, dir_o, atol=1e-3):
        parts.append("direction cosines differ (oblique)")
    if not np.allclose(sp_r[:n], sp_o[:n], rtol=1e-3, atol=1e-6):
        parts.append(f"spacing {_fmt(sp_o[:n])} vs {_fmt(sp_r[:n])} mm")
    if not np.allclose(or_r, or_o, atol=1e-3 * max(float(sp_r[:n].min()), 1e-3)):
        parts.append(f"origin {_fmt(or_o)} vs {_fmt(or_r)} mm")
    return "; ".join(parts) or None


def resample_label_to(label_img: Any, image_img: Any) -> np.ndarray:
    """Label array resampled (nearest neighbour, 0 outside) onto the voxel grid of
    ``image_img`` through both affines (``nibabel.processing.resample_from_to``); 2D files are
    resampled as one-slice volumes. Returns an array of the image's spatial shape."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    target_shape = tuple(int(s) for s in image_img.shape[:3])
    data = np.asanyarray(label_img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    flat = len(target_shape) == 2
    if flat:
        target_shape = (*target_shape, 1)
    if data.ndim == 2:
        data = data[..., None]
    source = nib.Nifti1Image(np.asarray(data), label_img.affine)
    out = resample_from_to(source, (target_shape, image_img.affine), order=0, mode="constant",
                           cval=0)
    array = np.asanyarray(out.dataobj)
    return array[..., 0] if flat else array


def read_picture(path: Path, mode: str | None = None) -> np.ndarray:
    """Pixels of a PNG/JPG/TIF/BMP/GIF file at their stored values and dtype.

    ``mode``: None (masks) keeps the stored values: palette (indexed, mode P) images give their
    indices when the palette holds colours (class colour maps: PASCAL VOC, REFUGE) and the grey
    level when every used entry is grey (what a viewer shows: GIF stores every picture with a
    palette); RGBA/CMYK give RGB, 1-bit 0/255; 'L' gives (H, W): colour converted to grey;
    'RGB' gives (H, W, 3): grey repeated. 16-bit images stay uint16 (0..65535), 32-bit integer
    int32 and float float32 in every mode, so nothing is clipped at 255; 16-bit colour PNG/TIFF
    (48-bit RGB) stays uint16 where SimpleITK is installed (Pillow reads it at 8 bits). Raises
    SSMISError naming the file when it is missing or not a readable image.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise SSMISError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit grey, float
                values = np.asarray(img)
                if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):
                    values = values.astype(np.uint16)  # PNG holds at most 16 bits
                else:
                    values = values.astype(values.dtype.newbyteorder("="))
                return np.repeat(values[..., None], 3, axis=-1) if mode == "RGB" else values
            if _deep_colour(path, img):  # Pillow would reduce 16-bit colour to 8 bits
                deep = _read_deep_colour(path)
                if deep is not None:
                    if mode == "L":  # Pillow's grey weights (ITU-R 601-2), at 16 bits
                        grey = deep @ np.asarray([0.299, 0.587, 0.114])
                        return np.round(grey).astype(np.uint16)
                    return deep
            if mode is not None and img.mode != mode:
                img = img.convert(mode)
            elif mode is None and img.mode in ("P", "PA"):
                return _palette_values(img)
            elif img.mode in ("RGBA", "LA", "CMYK", "1", "YCbCr", "LAB", "HSV"):
                img = img.convert("L" if img.mode in ("LA", "1") else "RGB")
            return np.asarray(img)
    except SSMISError:
        raise
    except Exception as exc:  # UnidentifiedImageError, truncated files, decoder errors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SSMISError(f"{path}: not a readable image ({reason})") from None


def _deep_colour(path: Path, img: Any) -> bool:
    """Whether an RGB(A) PNG or TIFF stores 16 bits per channel (Pillow decodes it to 8)."""
    if img.mode not in ("RGB", "RGBA"):
        return False
    if img.format == "PNG":
        with open(path, "rb") as f:
            head = f.read(26)
        return len(head) == 26 and head[24] == 16  # IHDR bit depth
    if img.format == "TIFF":
        bits = img.tag_v2.get(258)  # BitsPerSample
        return bits is not None and max(np.atleast_1d(bits)) > 8
    return False


def _read_deep_colour(path: Path) -> np.ndarray | None:
    """(H, W, 3) uint16 of a 16-bit colour file with SimpleITK, or None without it."""
    try:
        import SimpleITK as sitk
    except ImportError:
        return None
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    if values.ndim != 3 or values.shape[-1] < 3:
        return None
    return np.ascontiguousarray(values[..., :3]).astype(np.uint16, copy=False)


def _palette_values(img: Any) -> np.ndarray:
    """(H, W) uint8 of a mode P/PA image: the indices, or the grey levels of a grey palette."""
    indices = np.asarray(img)
    indices = indices[..., 0] if indices.ndim == 3 else indices
    palette = np.asarray(img.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    used = np.unique(indices)
    if used.size and int(used[-1]) < len(palette):
        colours = palette[used]
        if (colours[:, 0] == colours[:, 1]).all() and (colours[:, 1] == colours[:, 2]).all():
            return colours[:, 0][np.searchsorted(used, indices)]
    return indices


def picture_size(path: Path) -> tuple[tuple[int, int], str]:
    """((H, W), PIL mode) from the header only; SSMISError naming the file if unreadable."""
    from PIL import Image

    if not Path(path).is_file():
        raise SSMISError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            return (img.size[1], img.size[0]), img.mode
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SSMISError(f"{path}: not a readable image ({reason})") from None


def snap_for(setting: str | bool, path: Path) -> bool:
    """Whether mask values of ``path`` are snapped: ``data.mask_snap`` nearest (always), off
    (never) or auto (lossy files: JPEG, WebP)."""
    if isinstance(setting, bool):
        return setting
    if setting == "auto":
        return Path(path).suffix.lower() in LOSSY_MASK_EXTS
    return setting == "nearest"


def map_mask(path: Path, raw: np.ndarray, mask_values: Any, num_classes: int | None,
             snap: bool = False, picture: bool = True) -> np.ndarray:
    """Mask pixel values (H, W) / (*spatial), or a grey (H, W, 3) -> class indices (int64).

    ``mask_values``: None (values are the classes), or any spelling accepted by
    :func:`ssmis.data.masks.normalize_mask_values` (exact values and ranges). ``snap`` maps
    undeclared values to the class of the nearest declared value (lossy masks). Raises
    SSMISError naming ``path`` for a colour mask, a value outside the mapping or a class outside
    0..num_classes-1. ``picture=False`` (a volume, e.g. NIfTI): a last axis of 3 or 4 is a
    spatial axis, never colour channels.
    """
    return mapped_mask(path, raw, mask_values, num_classes, snap, picture)[0]


def _is_palette(path: Path) -> bool:
    """Whether ``path`` is a palette (indexed, PIL mode P) picture; False for anything else."""
    if Path(path).suffix.lower() not in (".png", ".gif", ".tif", ".tiff", ".bmp"):
        return False
    try:
        from PIL import Image

        with Image.open(path) as img:
            return img.mode in ("P", "PA")
    except Exception:  # noqa: BLE001 (only a hint: unreadable files fail elsewhere)
        return False


def mapped_mask(path: Path, raw: np.ndarray, mask_values: Any, num_classes: int | None,
                snap: bool = False, picture: bool = True) -> tuple[np.ndarray, int]:
    """:func:`map_mask` and the number of pixels whose value was snapped."""
    if picture and raw.ndim == 3 and raw.shape[-1] in (3, 4):
        if not (np.array_equal(raw[..., 0], raw[..., 1])
                and np.array_equal(raw[..., 0], raw[..., 2])):
            raise SSMISError(f"{path}: colour mask, expected one value per pixel (grey or "
                             "indexed PNG; colour masks: data.mask_rgb_classes)")
        raw = raw[..., 0]
    lossy = Path(path).suffix.lower() in LOSSY_MASK_EXTS
    if mask_values is None:
        if not snap or num_classes is None:
            try:
                return _label_to_int(path, raw, num_classes), 0
            except SSMISError as err:
                if not lossy:
                    raise
                raise SSMISError(f"{err}; a JPEG mask is lossy: declare its values with "
                                 "data.mask_values, e.g. {0: 0, 255: 1} (snapped to the "
                                 "nearest) or 0-127:0,128-255:1") from None
        mask_values = {c: c for c in range(num_classes)}
    try:
        mapping = normalize_mask_values(mask_values)
    except ValueError as exc:
        raise SSMISError(str(exc)) from None
    assert mapping is not None
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise SSMISError(f"{path}: mask has NaN/inf values")
    small = raw.dtype.kind in "ub" and raw.size > 0 and int(raw.max()) <= 65535
    if small:  # 8/16-bit: one pass with a table instead of a sort
        counts = np.bincount(raw.ravel().astype(np.intp, copy=False))
        values = np.flatnonzero(counts)
        table_counts = counts[values]
    else:
        values, inverse, table_counts = np.unique(raw, return_inverse=True, return_counts=True)
    classes, snapped = lookup_classes(values, mapping, snap)
    unknown = values[classes < 0]
    if unknown.size:
        shown = [v.item() for v in unknown[:12]]
        hint = ""
        if _is_palette(path):
            hint = ("; a palette (indexed) image: its values are palette indices, read as the "
                    "classes when data.mask_values is left out")
        elif unknown.size > 4:
            hint = ("; a resized or lossy mask? data.mask_snap: nearest snaps each value to the "
                    "nearest declared one, or give ranges such as 0-127:0,128-255:1")
        raise SSMISError(f"{path}: mask value(s) {shown}{' ...' if unknown.size > 12 else ''} "
                         f"not in data.mask_values {describe(mapping)}{hint}")
    if small:
        table = np.zeros(int(values[-1]) + 1, dtype=np.int64)
        table[values] = classes
        out = table[raw]
    else:
        out = classes[inverse.reshape(raw.shape)]
    if num_classes is not None and out.size and out.max() >= num_classes:
        raise SSMISError(f"{path}: class {int(out.max())} from data.mask_values, expected "
                         f"0..{num_classes - 1} (data.num_classes = {num_classes})")
    return out, int(table_counts[snapped].sum())


def read_roi(path: Path, shape: tuple[int, ...], image: Path) -> np.ndarray:
    """ROI (field of view) mask file -> bool (H, W): any non-zero value is inside.

    Raises SSMISError naming ``path`` when its size differs from ``shape`` (the image's, named
    by ``image``) or when it marks no pixel.
    """
    raw = read_picture(path, None)
    roi = raw.any(axis=-1) if raw.ndim == 3 else raw != 0
    if roi.shape != tuple(shape):
        raise SSMISError(f"{path}: ROI size {roi.shape[1]}x{roi.shape[0]} differs from image "
                         f"{Path(image).name} {shape[1]}x{shape[0]}")
    if not roi.any():
        raise SSMISError(f"{path}: ROI mask is empty (every pixel 0), expected the pixels to "
                         "score as non-zero")
    return roi


def map_rgb_mask(raw: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Colour mask (H, W, 3) -> classes: channel k set (> 127) gives ``classes[k]``, later
    channels overwriting earlier ones (M&Ms: R = LV, G = MYO, B = RV); elsewhere 0."""
    out = np.zeros(raw.shape[:2], dtype=np.int64)
    for k, cls in enumerate(classes):
        out[raw[..., k] > 127] = int(cls)
    return out


def _check_finite(path: Path, image: np.ndarray) -> None:
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise SSMISError(f"{path}: image contains {int(np.isnan(image).sum())} NaN and "
                         f"{int(np.isinf(image).sum())} inf values, expected finite intensities")


class CaseReader:
    """Loads cases of a catalog with the config's channels, normalisation and mask mapping.

    Picklable (plain data only), so DataLoader workers can use it. ``slice_axis`` moves that
    axis of 3D cases to the front (2D training and slice-wise inference on volumes).
    """

    def __init__(self, catalog: Catalog, data_cfg: Any, slice_axis: int | None = None) -> None:
        self.catalog = catalog
        self.kind = catalog.kind  # how files are decoded: nifti | images | prepared
        self.in_channels = data_cfg.in_channels
        self.num_classes = data_cfg.num_classes
        self.mask_values = data_cfg.mask_values
        self.mask_snap = getattr(data_cfg, "mask_snap", "auto")
        self.mask_rgb_classes = getattr(data_cfg, "mask_rgb_classes", None)
        self.window = tuple(data_cfg.intensity_window)
        self.spacing_override = tuple(data_cfg.spacing) if data_cfg.spacing else None
        names = catalog.channel_names
        self.norms = [data_cfg.normalization_for(c, names[c] if c < len(names) else None,
                                                 from_image_file=catalog.kind == "images")
                      for c in range(self.in_channels)]
        self.slice_axis = slice_axis
        #: labels put on their image's grid (``data.label_geometry: resample``): case -> why
        self.resampled: dict[str, str] = {}
        self.label_geometry = getattr(data_cfg, "label_geometry", "check")
        if catalog.kind == "prepared":
            self._check_prepared(data_cfg)

    def _check_prepared(self, data_cfg: Any) -> None:
        m = self.catalog.manifest
        path = self.catalog.root / PREPARED_MANIFEST
        if m.get("in_channels") != self.in_channels:
            raise SSMISError(f"{path}: prepared with {m.get('in_channels')} channel(s), but "
                             f"data.in_channels = {self.in_channels}")
        norm = data_cfg.normalization
        wanted = norm if isinstance(norm, list) else [norm] * self.in_channels
        for w, done in zip(wanted, m.get("normalization", []), strict=False):
            if w not in ("auto", done):
                raise SSMISError(f"{path}: prepared with normalization {m.get('normalization')}"
                                 f", but data.normalization = {norm}; prepare again")

    # -- normalisation ----------------------------------------------------------------------
    def normalisation(self, data_cfg: Any) -> list[ChannelNorm]:
        """One record per channel of what :meth:`load_raw` does to the intensities, with its
        numbers (the ct window; the divisor of ``scale`` from the first case's file type) and
        where it was decided."""
        if self.kind == "prepared":
            return prepared_normalisation(self.catalog.manifest, self.catalog.root)
        names = self.catalog.channel_names
        norms = []
        for c, scheme in enumerate(self.norms):
            name = names[c] if c < len(names) else None
            if data_cfg.normalization != "auto":
                source = "data.normalization"
            elif name is not None:
                source = f"dataset.json channel name '{name}' (nnU-Net's scheme for it)"
            elif self.kind == "images":
                source = "data.normalization auto for picture files"
            else:
                source = "data.normalization auto (no channel name)"
            clip = (float(self.window[0]), float(self.window[1])) if scheme == "ct" else None
            divisor = dtype = None
            if scheme == "scale":
                dtype = self._file_dtype(c)
                divisor = type_divisor(dtype) if dtype is not None else None
            norms.append(ChannelNorm(scheme, clip=clip, divisor=divisor, file_dtype=dtype,
                                     source=source))
        return norms

    def _file_dtype(self, channel: int) -> str | None:
        """The value type of the first case's file of ``channel`` (None: no case)."""
        if not self.catalog.cases:
            return None
        info = next(iter(self.catalog.cases.values()))
        if self.kind == "nifti":
            return str(read_nifti(info.images[channel], header_only=True)[3].get_data_dtype())
        return str(read_picture(info.images[0], {1: "L", 3: "RGB"}.get(self.in_channels)).dtype)

    # -- metadata ---------------------------------------------------------------------------
    def spatial_shape(self, case: str, with_label: bool = False) -> tuple[int, ...]:
        """Shape from headers only (no decoding), checking channels and label agree."""
        info = self.catalog.get(case)
        if self.kind == "prepared":
            if not info.images[0].is_file():
                raise SSMISError(f"{info.images[0]}: file not found")
            return tuple(info.shape or ())
        if self.kind == "nifti":
            if len(info.images) != self.in_channels:
                raise SSMISError(f"{info.images[0]}: case '{case}' has {len(info.images)} "
                                 f"channel file(s), data.in_channels = {self.in_channels}")
            headers = [read_nifti(p, header_only=True)[3] for p in info.images]
            shapes = [tuple(h.shape[:3]) for h in headers]
            shape = shapes[0]
            for p, s, h in zip(info.images, shapes, headers, strict=True):
                if s != shape:
                    raise SSMISError(f"{p}: shape {s} differs from {info.images[0].name} {shape}")
                diff = grid_difference(headers[0], h)
                if diff is not None:
                    raise SSMISError(f"{p}: voxel grid differs from {info.images[0].name} "
                                     f"({diff}); the channels of a case must share one grid")
            if with_label and info.label is not None:
                label_header = read_nifti(info.label, header_only=True)[3]
                self._check_label_grid(info, headers[0], label_header)
                ls = tuple(label_header.shape[:3])
                if ls != shape and self.label_geometry != "resample":
                    raise SSMISError(f"{info.label}: label shape {ls} differs from image shape "
                                     f"{shape} ({info.images[0].name})")
            return shape
        size, mode = picture_size(info.images[0])
        if with_label and info.label is not None:
            msize, _ = picture_size(info.label)
            if msize != size:
                raise SSMISError(f"{info.label}: mask size {msize[1]}x{msize[0]} differs from "
                                 f"image {info.images[0].name} {size[1]}x{size[0]}")
        if with_label and info.roi is not None:
            rsize, _ = picture_size(info.roi)
            if rsize != size:
                raise SSMISError(f"{info.roi}: ROI size {rsize[1]}x{rsize[0]} differs from "
                                 f"image {info.images[0].name} {size[1]}x{size[0]}")
        return size

    def num_slices(self, case: str) -> int:
        shape = self.spatial_shape(case)
        if len(shape) == 2:
            return 1
        return int(shape[self.slice_axis if self.slice_axis is not None else 0])

    # -- data -------------------------------------------------------------------------------
    def load_raw(self, case: str, with_label: bool) -> CaseArrays:
        """In the file's voxel order, before any slice-axis move."""
        info = self.catalog.get(case)
        if with_label and info.label is None:
            raise SSMISError(f"case '{case}' has no label ({info.images[0]})")
        if self.kind == "prepared":
            arrays = self._load_prepared(info, with_label)
        elif self.kind == "nifti":
            arrays = self._load_nifti(info, with_label)
        else:
            arrays = self._load_picture(info, with_label)
        _check_finite(info.images[0], arrays.image)
        return arrays

    def load(self, case: str, with_label: bool) -> CaseArrays:
        arrays = self.load_raw(case, with_label)
        if self.slice_axis is not None and arrays.image.ndim == 4:
            arrays = move_slice_axis(arrays, self.slice_axis)
        return arrays

    def _load_nifti(self, info: CaseInfo, with_label: bool) -> CaseArrays:
        if len(info.images) != self.in_channels:
            raise SSMISError(f"{info.images[0]}: case '{info.case}' has {len(info.images)} "
                             f"channel file(s), data.in_channels = {self.in_channels}")
        channels, spacing, affine = [], None, None
        for c, path in enumerate(info.images):
            data, sp, aff, _ = read_nifti(path)
            if data.dtype.kind not in "fiub":
                raise SSMISError(f"{path}: image has dtype {data.dtype}, expected numbers")
            _check_finite(path, data)
            if channels and data.shape != channels[0].shape:
                raise SSMISError(f"{path}: shape {data.shape} differs from "
                                 f"{info.images[0].name} {channels[0].shape}")
            channels.append(normalize(data, self.norms[c], self.window, data.dtype))
            if spacing is None:
                spacing, affine = sp, aff
        label = None
        if with_label:
            assert info.label is not None
            raw, _, _, label_img = read_nifti(info.label)
            image_img = read_nifti(info.images[0], header_only=True)[3]
            if self._check_label_grid(info, image_img, label_img):
                raw = resample_label_to(label_img, image_img)
            if raw.shape != channels[0].shape:
                raise SSMISError(f"{info.label}: label shape {raw.shape} differs from image "
                                 f"shape {channels[0].shape} ({info.images[0].name})")
            label = map_mask(info.label, np.asarray(raw), self.mask_values, self.num_classes,
                             picture=False)
        if self.spacing_override is not None:
            spacing = self._override(spacing)
        return CaseArrays(info.case, np.stack(channels), label, spacing, affine, info.domain)

    def _check_label_grid(self, info: CaseInfo, image_img: Any, label_img: Any) -> bool:
        """True when the label must be resampled onto the image grid
        (``data.label_geometry: resample`` and a different grid or shape).

        Raises:
            SSMISError: the label's orientation, spacing or origin differs from the image's
                and ``data.label_geometry`` is ``check``.
        """
        assert info.label is not None
        diff = grid_difference(image_img, label_img)
        if self.label_geometry == "resample":
            shape_differs = tuple(label_img.shape[:3]) != tuple(image_img.shape[:3])
            if diff is not None or shape_differs:
                self.resampled[info.case] = diff or "shape differs"
                return True
            return False
        if diff is not None:
            raise SSMISError(f"{info.label}: label grid differs from image "
                             f"{info.images[0].name}: {diff}; fix the file or set "
                             "data.label_geometry: resample (nearest neighbour onto the image)")
        return False

    def _override(self, spacing: tuple[float, ...] | None) -> tuple[float, ...] | None:
        n = len(spacing) if spacing else len(self.spacing_override or ())
        given = self.spacing_override or ()
        return tuple(given[:n]) if len(given) >= n else spacing

    def _load_picture(self, info: CaseInfo, with_label: bool) -> CaseArrays:
        mode = {1: "L", 3: "RGB"}.get(self.in_channels)
        if mode is None:
            raise SSMISError(f"data.in_channels: {self.in_channels}; image files give 1 (grey) "
                             "or 3 (RGB) channels")
        path = info.images[0]
        raw = read_picture(path, mode)
        pixels = raw if raw.ndim == 3 else raw[..., None]
        image = np.stack([normalize(pixels[..., c], self.norms[c], self.window, raw.dtype)
                          for c in range(pixels.shape[-1])])
        label, snapped = None, 0
        if with_label:
            assert info.label is not None
            rgb = self.mask_rgb_classes is not None
            mask = read_picture(info.label, "RGB" if rgb else None)
            if mask.shape[:2] != raw.shape[:2]:
                raise SSMISError(f"{info.label}: mask size {mask.shape[1]}x{mask.shape[0]} "
                                 f"differs from image {path.name} {raw.shape[1]}x{raw.shape[0]}")
            if rgb:
                label = map_rgb_mask(mask, self.mask_rgb_classes)
            else:
                # auto snaps lossy masks to declared values only: snapping 0/255 JPEG values
                # to the class indices 0/1 would make every grey 1
                snap = snap_for(self.mask_snap, info.label) \
                    if self.mask_values is not None or self.mask_snap == "nearest" else False
                label, snapped = mapped_mask(info.label, mask, self.mask_values,
                                             self.num_classes, snap=snap)
        roi = read_roi(info.roi, raw.shape[:2], path) if info.roi is not None else None
        spacing = tuple(self.spacing_override[-2:]) if self.spacing_override else None
        source_range = (float(raw.min()), float(raw.max())) if raw.size else None
        return CaseArrays(info.case, image, label, spacing, None, info.domain, roi=roi,
                          source_dtype=str(raw.dtype), source_range=source_range,
                          snapped=snapped)

    def _load_prepared(self, info: CaseInfo, with_label: bool) -> CaseArrays:
        path = info.images[0]
        if not path.is_file():
            raise SSMISError(f"{path}: file not found")
        try:
            with np.load(path) as z:
                image = z["image"].astype(np.float32)
                label = z["label"].astype(np.int64) if with_label else None
                spacing = tuple(float(s) for s in z["spacing"]) if z["spacing"].size else None
                affine = z["affine"] if z["affine"].size else None
                roi = z["roi"].astype(bool) if "roi" in z.files and z["roi"].size else None
        except Exception as exc:
            raise SSMISError(f"{path}: not a readable prepared case ({exc})") from None
        if self.spacing_override is not None:
            spacing = self._override(spacing)
        return CaseArrays(info.case, image, label, spacing, affine, info.domain, roi=roi,
                          source_dtype="float16")


def prepared_normalisation(manifest: dict[str, Any], root: Path) -> list[ChannelNorm]:
    """The normalisation records of a prepared dataset (already applied in its files).

    Manifests of ssmis < 0.3 name the schemes only: their numbers (the ``scale`` divisor)
    are unknown and the record says so."""
    where = f"{root / PREPARED_MANIFEST} normalisation"
    if manifest.get("normalisation"):
        return [ChannelNorm.from_dict({**r, "stored": True}, where)
                for r in manifest["normalisation"]]
    window = manifest.get("intensity_window", [-1000.0, 1000.0])
    return [ChannelNorm(n, clip=(float(window[0]), float(window[1])) if n == "ct" else None,
                        stored=True, source=f"{root / PREPARED_MANIFEST} (scheme only)")
            for n in manifest.get("normalization", [])]


def move_slice_axis(arrays: CaseArrays, axis: int) -> CaseArrays:
    """Volume (C, X, Y, Z) -> (C, D, H, W) with ``axis`` first; spacing permuted the same way."""
    image = np.moveaxis(arrays.image, axis + 1, 1)
    label = np.moveaxis(arrays.label, axis, 0) if arrays.label is not None else None
    spacing = arrays.spacing
    if spacing is not None and len(spacing) == 3:
        order = [axis] + [a for a in range(3) if a != axis]
        spacing = tuple(spacing[a] for a in order)
    roi = np.ascontiguousarray(np.moveaxis(arrays.roi, axis, 0)) \
        if arrays.roi is not None else None
    return CaseArrays(arrays.case, np.ascontiguousarray(image),
                      np.ascontiguousarray(label) if label is not None else None, spacing,
                      arrays.affine, arrays.domain, roi=roi, source_dtype=arrays.source_dtype,
                      source_range=arrays.source_range, snapped=arrays.snapped)


# --------------------------------------------------------------------------- prepare


def prepare_dataset(catalog: Catalog, data_cfg: Any, out: Path, progress: bool = True,
                    reader: CaseReader | None = None) -> Path:
    """Write every case as ``out/cases/<case>.npz`` (float16 image, uint8 label) + manifest.

    ``reader``: the layout's own reader (``CatalogLayout.make_reader``: e.g. HRF's vessel
    threshold); default a plain :class:`CaseReader` of ``data_cfg``.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SSMISError(f"{out}: output folder exists and is not empty")
    if catalog.kind == "prepared":
        raise SSMISError(f"{catalog.root}: already a prepared dataset")
    reader = reader if reader is not None else CaseReader(catalog, data_cfg)
    for case in catalog.cases:  # headers first: cheap errors before any writing
        reader.spatial_shape(case, with_label=True)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    entries = []
    cases = list(catalog.cases.values())
    iterator = cases
    if progress and len(cases) > 1:
        from tqdm import tqdm

        iterator = tqdm(cases, desc="prepare", unit="case", leave=False)
    for info in iterator:
        arrays = reader.load_raw(info.case, with_label=info.label is not None)
        if np.abs(arrays.image).max(initial=0) > 60000:
            raise SSMISError(f"{info.images[0]}: intensities beyond float16 range after "
                             f"normalization {reader.norms}; choose data.normalization")
        label = arrays.label if arrays.label is not None else np.zeros(0, np.uint8)
        name = case_file_name(info.case)
        fields = {
            "image": arrays.image.astype(np.float16), "label": label.astype(np.uint8),
            "spacing": np.asarray(arrays.spacing or (), dtype=np.float64),
            "roi": arrays.roi.astype(np.uint8) if arrays.roi is not None
            else np.zeros(0, np.uint8),
            "affine": np.asarray(arrays.affine if arrays.affine is not None else (), np.float64)}
        atomic_write(out / "cases" / name,
                     lambda tmp, fields=fields: np.savez_compressed(tmp, **fields))
        entries.append({"case": info.case, "file": name, "label": info.label is not None,
                        "domain": info.domain, "subset": info.subset,
                        "shape": list(arrays.image.shape[1:]),
                        "source": [str(p) for p in info.images]})
    manifest = {
        "format": PREPARED_FORMAT, "source": str(catalog.root), "source_layout": catalog.layout,
        "in_channels": data_cfg.in_channels, "normalization": reader.norms,
        "normalisation": [n.as_dict() for n in reader.normalisation(data_cfg)],
        "intensity_window": list(reader.window), "mask_values": data_cfg.mask_values,
        "num_classes": data_cfg.num_classes, "channel_names": catalog.channel_names,
        "label_names": {str(k): v for k, v in catalog.label_names.items()}, "cases": entries,
    }
    write_json(out / PREPARED_MANIFEST, manifest, indent=1)  # last: marks the copy complete
    return out
