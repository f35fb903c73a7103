"""Converters of released datasets whose folders no layout reads as they are
(``ssmis data convert NAME SRC DST``; :data:`CONVERTERS`).

The SynFoC datasets (the folder formats read by ``code/dataloaders/dataloader.py`` of
``MQinghe/SynFoC`` @ ``3f3c06a``) on the image-folder layout (``data.layout: images``, one folder
per domain).

Three of the four read as they are, by configuration alone (``configs/<dataset>/synfoc.yaml``):

=========  ==============================================  ===================================
dataset    folders (``data.root`` = the dataset folder)    labels
=========  ==============================================  ===================================
Prostate   ``<site>/{train,test}/{image,mask}/*.png``      ``mask_values {0: 1, 255: 0}``
Fundus     ``Domain<k>/{train,test}/ROIs/{image,mask}``    ``{0: 1, 128: 2, 255: 0}`` (1 = cup,
                                                           2 = rim; disc = {1, 2})
M&Ms       ``vendor<X>/{train,test}/{image,mask}/*.png``   ``mask_rgb_classes [1, 2, 3]``
=========  ==============================================  ===================================

(``images_dir: train/image``, ``masks_dir: train/mask``, ``test_images_dir: test/image``,
``test_masks_dir: test/mask``.) BUSI keeps images and masks side by side with several masks per
image, so :func:`convert_busi` rewrites it once:

    ssmis data convert busi Dataset_BUSI_with_GT data/busi

It keeps ``benign`` and ``malignant`` (``normal`` is not used), merges ``<name>_mask.png`` and
``<name>_mask_<k>.png`` by maximum, converts images to grey, names cases ``<class>_<n>`` (no
zero padding, so that sorted names keep the authors' sorted ``glob`` order: ``benign (1)``,
``benign (10)``, ``benign (100)``, ...; ``data.labeled_pick: first`` then takes the authors'
labeled cases) and puts the last ``floor(0.2 n)`` files of each class in sorted file order into
``test/`` (the authors' split), the rest into ``train/``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ssmis.atomic import atomic_write
from ssmis.errors import SSMISError

BUSI_CLASSES = ("benign", "malignant")
_BUSI_IMAGE = re.compile(r"^(?P<cls>[a-z]+) \((?P<n>\d+)\)\.png$")


def convert_busi(src: Path, dst: Path, classes: tuple[str, ...] = BUSI_CLASSES,
                 test_fraction: float = 0.2) -> dict[str, dict[str, int]]:
    """Rewrite ``Dataset_BUSI_with_GT`` as ``dst/<class>/{train,test}/{images,masks}``;
    returns the number of cases per class and subset."""
    from PIL import Image

    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise SSMISError(f"{dst}: output folder exists and is not empty")
    counts: dict[str, dict[str, int]] = {}
    for cls in classes:
        folder, mask_folder = busi_class_folders(src, cls)
        names = sorted(p.name for p in folder.iterdir() if _BUSI_IMAGE.match(p.name))
        if not names:
            raise SSMISError(f"{folder}: no '{cls} (n).png' images")
        n_test = int(test_fraction * len(names))
        counts[cls] = {"train": len(names) - n_test, "test": n_test}
        for i, name in enumerate(names):
            subset = "test" if i >= len(names) - n_test else "train"
            stem = name[:-4]
            masks = sorted(mask_folder.glob(f"{glob_escape(stem)}_mask*.png"))
            masks = [m for m in masks if re.fullmatch(re.escape(stem) + r"_mask(_\d+)?\.png",
                                                      m.name)]
            if not masks:
                raise SSMISError(f"{folder / name}: no mask '{mask_folder / stem}_mask.png'")
            with Image.open(folder / name) as img:
                grey = np.asarray(img.convert("L"))
            merged = np.zeros(grey.shape, dtype=np.uint8)
            for m in masks:
                with Image.open(m) as mimg:
                    arr = np.asarray(mimg.convert("L"))
                if arr.shape != grey.shape:
                    raise SSMISError(f"{m}: mask size differs from the image {name}")
                merged = np.maximum(merged, arr)
            merged = np.where(merged > 127, 255, 0).astype(np.uint8)
            number = int(_BUSI_IMAGE.match(name).group("n"))  # type: ignore[union-attr]
            case = f"{cls}_{number}.png"  # unpadded: sorted names = the authors' glob order
            for sub, arr in (("images", grey), ("masks", merged)):
                out = dst / cls / subset / sub
                out.mkdir(parents=True, exist_ok=True)
                picture = Image.fromarray(arr)
                atomic_write(out / case, lambda tmp, picture=picture: picture.save(tmp))
    return counts


def busi_class_folders(src: Path, cls: str) -> tuple[Path, Path]:
    """The image and mask folders of one class: ``<cls>/`` for both (the Kaggle download), or
    ``<cls>/images`` and ``<cls>/mask`` (the copy in GitHub ``yirutsai/Breast-ultrasound-dataset``,
    folder ``data/``)."""
    folder = src / cls
    if (folder / "images").is_dir() and (folder / "mask").is_dir():
        return folder / "images", folder / "mask"
    if folder.is_dir():
        return folder, folder
    raise SSMISError(f"{folder}: not found (expected {src}/{cls}/ with '{cls} (n).png' and "
                     f"'{cls} (n)_mask.png', side by side or in images/ and mask/)")


def glob_escape(text: str) -> str:
    """Escape glob metacharacters (BUSI names contain parentheses, harmless, and spaces)."""
    return re.sub(r"([\[\]*?])", r"[\1]", text)


#: converter name -> (function(src, dst) -> {class: {"train": n, "test": n}}, one-line help)
CONVERTERS: dict[str, tuple[Callable[[Path, Path], dict[str, dict[str, int]]], str]] = {
    "busi": (convert_busi, "Dataset_BUSI_with_GT -> <class>/{train,test}/{image,mask} "
                           "(SynFoC's BUSI protocol; configs/busi/)"),
}


def convert(name: str, src: Path, dst: Path) -> list[str]:
    """Run converter ``name`` from ``src`` into ``dst``; returns one summary line per class.

    Raises:
        SSMISError: an unknown converter (listing the known ones) or the converter's own
            one-line errors (missing files, an existing destination).
    """
    if name not in CONVERTERS:
        raise SSMISError(f"data convert: unknown dataset '{name}'; expected one of: "
                         f"{', '.join(sorted(CONVERTERS))}")
    counts = CONVERTERS[name][0](Path(src), Path(dst))
    return [f"{cls}: {c['train']} train, {c['test']} test" for cls, c in counts.items()]
