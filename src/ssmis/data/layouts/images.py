"""``images``: 2D pictures (PNG/JPG/TIF/BMP/GIF) in ``images/`` + ``masks/`` (+ ``unlabeled/``),
directly under the root or in one folder per domain (:func:`scan_images`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ssmis.data.cases import CaseInfo, Catalog, report_problem
from ssmis.data.layouts.catalog import CatalogLayout
from ssmis.data.layouts.params import PictureOptions, SplitRules, layout_option
from ssmis.data.pictures import IMAGE_EXTS
from ssmis.errors import SSMISError


class ImagesLayout(CatalogLayout):
    """2D image/mask folders; mask values map to classes by ``data.mask_values``."""

    name = "images"
    description = "2D pictures: images/ + masks/ (+ unlabeled/), optionally per domain folder"
    patch_dims = (2,)

    class Params(SplitRules, PictureOptions):
        """The own-data split rules and the picture options (folders, name patterns, ROI,
        mask values)."""

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "images").is_dir() or any(
            (d / "images").is_dir() for d in root.iterdir() if d.is_dir())

    @classmethod
    def scan(cls, root: Path, data: Any = None, problems: list[str] | None = None) -> Catalog:
        kw = scan_images_options(data) if data is not None else {}
        return scan_images(root, problems=problems, **kw)

    @classmethod
    def write_example(cls, root: Path) -> dict[str, Any]:
        from PIL import Image

        from ssmis.data.phantoms import blob_volume

        for i in range(6):
            image, label = blob_volume(np.random.default_rng(i), (40, 48))
            pixels = np.clip(image * 60 + 60, 0, 255).astype(np.uint8)
            folder = "site_a" if i < 3 else "site_b"
            (root / folder / "images").mkdir(parents=True, exist_ok=True)
            (root / folder / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / folder / "images" / f"img{i}.png")
            Image.fromarray(label * 255).save(root / folder / "masks" / f"img{i}.png")
        return {"layout": cls.name, "root": str(root), "num_classes": 2, "labeled_count": 2,
                "val_count": 1, "test_count": 1, "patch_size": [32, 32],
                "mask_values": {0: 0, 255: 1}}


#: folders of an images dataset that name a subset rather than a domain (DRIVE: training/, test/)
#: (subset, case-id prefix); a shipped validation folder joins the training pool, from which
#: the split draws its own validation cases
SUBSET_FOLDERS = {"train": ("train", ""), "training": ("train", ""), "test": ("test", "test/"),
                  "testing": ("test", "test/"), "val": ("train", "val/"),
                  "valid": ("train", "val/"), "validation": ("train", "val/")}


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


def image_files(folder: Path, pattern: NamePattern | None = None,
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
    unmatched: list[Path] = []
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
            unmatched.append(path)
            continue
        key = key or path.stem
        if key in out:
            report_problem(problems, f"{path}: case id '{key}' also names {out[key].name}; "
                           "keep one file per case in a folder")
            continue
        out[key] = path
    if unmatched and pattern is not None:
        report_problem(problems, _one_line(unmatched, folder, "name does not match",
                                           f"{pattern.field} '{pattern.text}'"))
    return out


def _one_line(paths: list[Path], folder: Path, what: str, rule: str) -> str:
    """One problem line for the files of ``folder`` that share a problem: the file itself
    when there is one, else the count and two examples (a wrong pattern gives one line, not
    one a file)."""
    if len(paths) == 1:
        return f"{paths[0]}: {what} {rule}"
    examples = ", ".join(p.name for p in paths[:2])
    return f"{folder}: {len(paths)} files: {what} {rule} (e.g. {examples})"


def scan_images_options(data_cfg: Any) -> dict[str, Any]:
    """The :func:`scan_images` keyword arguments a DataConfig sets (folders, name patterns,
    ROI folders); fields the config does not have keep their defaults."""
    names = ("images_dir", "masks_dir", "unlabeled_dir", "test_images_dir", "test_masks_dir",
             "image_pattern", "mask_pattern", "roi_dir", "roi_pattern", "test_roi_dir")
    return {n: layout_option(data_cfg, n) for n in names
            if layout_option(data_cfg, n) is not None}


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
            report_problem(problems, f"{field_name}: no folder '{sub}' in {root}"
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
        unlabeled = (image_files(folder / unlabeled_dir, pats["image"], problems, any_name=True,
                                  ignored=catalog.ignored)
                     if subset == "train" else {})
        rois = _scan_image_group(catalog, domain, subset, prefix, folder / images_dir,
                                 folder / masks_dir, folder / roi_dir if roi_dir else None,
                                 pats, problems, set(unlabeled))
        if subset == "train":
            for key, path in unlabeled.items():
                case = prefix + key
                if case in catalog.cases:
                    report_problem(problems, f"{path}: '{key}' is also a labeled image")
                    continue
                catalog.cases[case] = CaseInfo(case, [path], None, domain, "unlabeled",
                                               roi=rois.get(key))
        if test_images_dir is not None and test_masks_dir is not None \
                and (folder / test_images_dir).is_dir():
            _scan_image_group(catalog, domain, "test", prefix + "test/",
                              folder / test_images_dir, folder / test_masks_dir,
                              folder / test_roi_dir if test_roi_dir else None, pats, problems)
    if not catalog.cases and not problems:
        report_problem(problems, f"{root}: no images ({', '.join(IMAGE_EXTS)}) in {images_dir}/")
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
    images = image_files(images_folder, pats["image"], problems, ignored=catalog.ignored)
    what = "test mask" if subset == "test" else "mask"
    if not masks_folder.is_dir():
        if images:
            hint = "" if subset == "test" else ", or put unlabeled images in unlabeled/"
            report_problem(problems, f"{masks_folder}: folder not found, the {len(images)} "
                           f"image(s) in {images_folder} have no {what}s: set data.masks_dir (and "
                           f"data.mask_pattern for other file names; `ssmis data inspect "
                           f"--config CONFIG.yaml` checks them){hint}")
        return {}
    masks = image_files(masks_folder, pats["mask"], problems, ignored=catalog.ignored)
    rois: dict[str, Path] = {}
    if roi_folder is not None:
        if roi_folder.is_dir():
            rois = image_files(roi_folder, pats["roi"], problems, ignored=catalog.ignored)
        elif images:
            report_problem(problems, f"{roi_folder}: ROI folder not found (data.roi_dir)")
            return {}
    missing = [path for key, path in images.items() if key not in masks]
    if missing:
        hint = " (put unlabeled images in unlabeled/)" if subset == "train" else ""
        report_problem(problems, _missing_masks(missing, images, masks, masks_folder, pats["mask"],
                       what, hint))
    for key, path in images.items():
        mask = masks.get(key)
        if mask is None:
            continue
        roi = rois.get(key)
        if roi_folder is not None and roi is None:
            report_problem(problems,
                           f"{path}: no ROI mask {roi_folder}/{pats['roi'].name_for(key)}.*")
            continue
        if prefix + key in catalog.cases:
            report_problem(problems, f"{path}: case id '{prefix + key}' also names "
                           f"{catalog.cases[prefix + key].images[0]}")
            continue
        catalog.cases[prefix + key] = CaseInfo(prefix + key, [path], mask, domain, subset,
                                               roi=roi)
    orphans = [path for key, path in masks.items() if key not in images]
    if orphans:
        report_problem(problems, _one_line(
            orphans, masks_folder, f"mask without an image in {images_folder}/",
            f"({pats['image'].field} '{pats['image'].text}')"))
    for key, path in rois.items():
        if key not in images and key not in other_ids:
            report_problem(problems, f"{path}: ROI mask without an image in {images_folder}/")
    return rois
