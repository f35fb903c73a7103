"""``images``: 2D pictures (PNG/JPG/TIF/BMP/GIF) in ``images/`` + ``masks/`` (+ ``unlabeled/``),
directly under the root or in one folder per domain (:func:`ssmis.data.owndata.scan_images`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ssmis.data.layouts.catalog import CatalogLayout
from ssmis.data.owndata import Catalog, scan_images, scan_images_options


class ImagesLayout(CatalogLayout):
    """2D image/mask folders; mask values map to classes by ``data.mask_values``."""

    name = "images"
    description = "2D pictures: images/ + masks/ (+ unlabeled/), optionally per domain folder"
    patch_dims = (2,)

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
