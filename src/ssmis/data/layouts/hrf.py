"""``hrf``: the High-Resolution Fundus (HRF) image database as released (Budai et al., Int. J.
Biomed. Imaging 2013; https://www5.cs.fau.de/research/data/fundus-images/): 45 colour fundus
photographs, 15 each of healthy eyes (``h``), diabetic retinopathy (``dr``) and glaucoma (``g``),
3504 x 2336 pixels, with one manual vessel segmentation and one field-of-view (FOV) mask each::

    images/01_dr.JPG  ..  15_dr.JPG, 01_g.jpg .. 15_g.jpg, 01_h.jpg .. 15_h.jpg   (RGB JPEG)
    manual1/01_dr.tif ..                                                         (vessels, 0/255)
    mask/01_dr_mask.tif ..                                                       (FOV, 0/255)

(file names and extension case as listed by bioidiap/bob.ip.binseg,
``bob/ip/binseg/data/hrf/default.json``). A pixel is a vessel where ``manual1`` > 127 (its
1-bit reading) and inside the FOV where ``mask`` is non-zero; the FOV is each case's ROI, so
validation and test scores count only the pixels inside it, as vessel-segmentation work does.

Protocol. CVBM (Cao et al., IEEE TIP 2025) reports HRF with 27 training and 18 test images and
1 or 3 labeled images; its repository (caoluyang0830/CVBM @ 2ca4aad) ships no HRF script, list
or preprocessing, so the exact images are not published. This layout fixes them by a rule that
keeps the three diagnoses balanced: images 01-09 of each diagnosis train (27), 10-15 test (18).
Training images are ordered 01_dr, 01_g, 01_h, 02_dr, ...; the first ``data.labeled_count`` are
labeled (1: 01_dr; 3: one per diagnosis), validation takes the last ``data.val_count`` (default
3: 09_dr, 09_g, 09_h), either kept as unlabeled training images (``data.val_pool: unlabeled``:
training sees the 27 images of the protocol) or held out. ``data.split_file`` replaces the rule.

Images are read at full resolution; the 2D pipeline resizes them to ``data.patch_size`` for the
network (training and inference) and scores at full resolution, inside the FOV.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ssmis.data.cases import CaseArrays, CaseInfo, Catalog
from ssmis.data.layouts.base import CaseEntry
from ssmis.data.layouts.catalog import CatalogLayout
from ssmis.data.layouts.params import LayoutParams
from ssmis.data.pictures import read_picture
from ssmis.data.reader import CaseReader
from ssmis.data.splits import Split
from ssmis.errors import SSMISError

DIAGNOSES = ("dr", "g", "h")
IMAGES, VESSELS, FOV = "images", "manual1", "mask"
NUM_PER_DIAGNOSIS = 15
LAST_TRAIN = 9  # images 01..09 of each diagnosis train, 10..15 test (27 / 18)
DEFAULT_VAL = 3
_NAME = re.compile(r"^(?P<num>\d{2})_(?P<dx>dr|g|h)$")


def hrf_ids() -> list[str]:
    """The 45 image ids in protocol order (01_dr, 01_g, 01_h, 02_dr, ..., 15_h)."""
    return [f"{n:02d}_{dx}" for n in range(1, NUM_PER_DIAGNOSIS + 1) for dx in DIAGNOSES]


def hrf_protocol(labeled_count: int, val_count: int = DEFAULT_VAL,
                 val_pool: str = "unlabeled") -> Split:
    """The ssmis HRF split (27 train / 18 test; see the module docstring).

    Raises:
        SSMISError: ``data.labeled_count`` / ``data.val_count`` out of range.
    """
    ids = hrf_ids()
    train = [i for i in ids if int(i[:2]) <= LAST_TRAIN]
    test = [i for i in ids if int(i[:2]) > LAST_TRAIN]
    if not 1 <= labeled_count < len(train):
        raise SSMISError(f"data.labeled_count: {labeled_count} is out of range, expected 1.."
                         f"{len(train) - 1} (HRF has {len(train)} training images)")
    if labeled_count + val_count > len(train):
        raise SSMISError(f"data.labeled_count + data.val_count: {labeled_count} + {val_count} "
                         f"exceed the {len(train)} HRF training images")
    labeled, val = train[:labeled_count], train[len(train) - val_count:]
    unlabeled = [i for i in train[labeled_count:]
                 if val_pool == "unlabeled" or i not in set(val)]
    split = Split(labeled=labeled, unlabeled=unlabeled, val=val, test=test)
    split.check_disjoint(val_in_unlabeled=val_pool == "unlabeled")
    return split


def _find(folder: Path, name: str) -> Path | None:
    """``folder/name``, or the file whose name matches it up to letter case (``.JPG``)."""
    exact = folder / name
    if exact.is_file():
        return exact
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.lower() == name.lower() and path.is_file():
                return path
    return None


class HRFReader(CaseReader):
    """:class:`~ssmis.data.reader.CaseReader` of the HRF files: the image and the FOV (ROI) as
    the ``images`` reader decodes them ((C, H, W) float32, ``data.normalization`` 'auto' = / 255;
    ROI (H, W) bool, non-zero inside), the vessel label as ``manual1`` > 127 ((H, W) int64)."""

    def load_raw(self, case: str, with_label: bool) -> CaseArrays:
        """Image (C, H, W), FOV (H, W) and, with ``with_label``, the 0/1 vessel map (H, W).

        Raises:
            SSMISError: a missing or unreadable file, or a size differing from the image.
        """
        arrays = super().load_raw(case, with_label=False)
        if with_label:
            info = self.catalog.get(case)
            assert info.label is not None
            arrays.label = self._binary(info.label, arrays.image.shape[1:]).astype(np.int64)
        return arrays

    @staticmethod
    def _binary(path: Path, shape: tuple[int, ...]) -> np.ndarray:
        raw = read_picture(path)
        if raw.ndim == 3:
            raw = raw.max(axis=-1)
        if raw.shape != tuple(shape):
            raise SSMISError(f"{path}: size {raw.shape[1]}x{raw.shape[0]} differs from the "
                             f"image {shape[1]}x{shape[0]}")
        return raw > 127


class HRFLayout(CatalogLayout):
    """The HRF release read directly (2D RGB pictures, vessel class 1)."""

    name = "hrf"
    description = "HRF fundus release: images/NN_{dr,g,h}.jpg, manual1/*.tif, mask/*_mask.tif"
    patch_dims = (2,)

    class Params(LayoutParams):
        """The fixed 27/18 protocol (vessel = manual1 > 127): how many images are labeled and
        validated, and where validation is drawn from (any other split: ``data.split_file``)."""

        labeled_count: int | None = Field(default=None, ge=1,
                                          description="labeled images (CVBM: 1 or 3)")
        val_count: int | None = Field(default=None, ge=1,
                                      description="validation images (default 3)")
        val_pool: Literal["held_out", "unlabeled"] = "held_out"

    @classmethod
    def config_problem(cls, data: Any) -> str | None:
        if data.split_file is None and data.params.labeled_count is None:
            return "data.labeled_count: required for hrf (CVBM's table: 1 or 3 labeled images)"
        if data.num_classes != 2:
            return (f"data.num_classes: hrf has 2 classes (background, vessel), got "
                    f"{data.num_classes}")
        return super(CatalogLayout, cls).config_problem(data)

    @classmethod
    def detect(cls, root: Path) -> bool:
        return all((root / d).is_dir() for d in (IMAGES, VESSELS, FOV))

    @classmethod
    def scan(cls, root: Path, data: Any = None, problems: list[str] | None = None) -> Catalog:
        """Catalog of the HRF images under ``root`` in protocol order, each FOV mask as the
        case's ROI.

        Raises:
            SSMISError: a missing folder, an image without its ``manual1`` or ``mask`` file,
                or a file name outside the release's ``NN_{dr,g,h}`` (collected instead into
                ``problems`` when given).
        """
        for folder in (IMAGES, VESSELS, FOV):
            if not (root / folder).is_dir():
                raise SSMISError(f"{root}: no {folder}/ folder (the HRF release has images/, "
                                 "manual1/ and mask/)")
        found: dict[str, Path] = {}
        for path in sorted((root / IMAGES).iterdir()):
            if not path.is_file():
                continue
            if _NAME.match(path.stem) is None or path.suffix.lower() not in (".jpg", ".jpeg"):
                cls._problem(problems, f"{path}: not an HRF image name (NN_dr.JPG, NN_g.jpg, "
                                       "NN_h.jpg)")
                continue
            found[path.stem] = path
        cases: dict[str, CaseInfo] = {}
        for case in sorted(found, key=lambda c: (int(c[:2]), DIAGNOSES.index(c[3:]))):
            label = _find(root / VESSELS, f"{case}.tif")
            mask = _find(root / FOV, f"{case}_mask.tif")
            if label is None or mask is None:
                missing = root / VESSELS / f"{case}.tif" if label is None else \
                    root / FOV / f"{case}_mask.tif"
                cls._problem(problems, f"{missing}: not found (needed for {found[case].name})")
                continue
            subset = "train" if int(case[:2]) <= LAST_TRAIN else "test"
            cases[case] = CaseInfo(case, [found[case]], label, None, subset, roi=mask)
        if not cases:
            cls._problem(problems, f"{root / IMAGES}: no HRF images (NN_dr.JPG, NN_g.jpg, ...)")
        return Catalog(cls.name, root, cases, ["R", "G", "B"], {0: "background", 1: "vessel"},
                       kind="images")

    @staticmethod
    def _problem(problems: list[str] | None, message: str) -> None:
        if problems is None:
            raise SSMISError(message)
        problems.append(message)

    @classmethod
    def write_example(cls, root: Path) -> dict[str, Any]:
        """All 45 HRF names at 36 x 54 pixels (the release's 2:3 aspect): RGB JPEG images
        (``.JPG`` for ``dr``), 8-bit grey vessel TIFFs and RGB FOV TIFFs, both 0/255."""
        from PIL import Image

        rows, cols = 36, 54
        yy, xx = np.mgrid[:rows, :cols]
        fov = ((yy - rows / 2) / (rows * 0.48)) ** 2 + ((xx - cols / 2) / (cols * 0.4)) ** 2 < 1
        for k, case in enumerate(hrf_ids()):
            rng = np.random.default_rng(k)
            vessels = np.zeros((rows, cols), bool)
            for _ in range(3):  # a few straight vessels across the disc
                r0, r1 = rng.integers(0, rows, 2)
                line = np.round(np.linspace(r0, r1, cols)).astype(int)
                vessels[line, np.arange(cols)] = True
                vessels[np.clip(line + 1, 0, rows - 1), np.arange(cols)] = True
            vessels &= fov
            rgb = np.stack([150 + 40 * fov, 70 + 30 * fov, 30 + 10 * fov], -1).astype(float)
            rgb[vessels] *= 0.45
            rgb += rng.normal(0, 6, rgb.shape)
            pixels = np.clip(rgb * fov[..., None], 0, 255).astype(np.uint8)
            for folder in (IMAGES, VESSELS, FOV):
                (root / folder).mkdir(parents=True, exist_ok=True)
            ext = ".JPG" if case.endswith("dr") else ".jpg"
            Image.fromarray(pixels, "RGB").save(root / IMAGES / f"{case}{ext}", quality=95)
            Image.fromarray((vessels * 255).astype(np.uint8), "L").save(
                root / VESSELS / f"{case}.tif")
            mask = np.repeat((fov * 255).astype(np.uint8)[..., None], 3, axis=-1)
            Image.fromarray(mask, "RGB").save(root / FOV / f"{case}_mask.tif")
        return {"layout": cls.name, "root": str(root), "num_classes": 2, "in_channels": 3,
                "labeled_count": 2, "val_count": 1, "patch_size": [32, 48]}

    # -- interface --------------------------------------------------------------------------
    @classmethod
    def make_reader(cls, catalog: Catalog, data: Any, slice_axis: int | None = None
                    ) -> HRFReader:
        """:class:`HRFReader` (vessels thresholded at 127)."""
        return HRFReader(catalog, data)

    @property
    def reader(self) -> HRFReader:
        reader = super().reader
        assert isinstance(reader, HRFReader)
        return reader

    def cases(self) -> list[CaseEntry]:
        return [CaseEntry(c.case, c.case, c.subset, True) for c in self.catalog.cases.values()]

    def protocol_split(self) -> Split:
        """:func:`hrf_protocol` after checking that all 45 images are present.

        Raises:
            SSMISError: an image of the protocol is missing (naming it).
        """
        catalog = self.catalog
        for case in hrf_ids():
            if case not in catalog.cases:
                ext = "JPG" if case.endswith("dr") else "jpg"
                raise SSMISError(f"{self.root / IMAGES / f'{case}.{ext}'}: not found; the HRF "
                                 "protocol needs all 45 images (or set data.split_file)")
        return hrf_protocol(self.data.params.labeled_count,
                            self.data.params.val_count or DEFAULT_VAL, self.data.params.val_pool)
