"""Registry of data layouts by name (``data.layout``). A new layout is one module with a
:class:`~ssmis.data.layouts.base.Layout` subclass plus one line in ``_BUILTIN``; the contract
test then runs it on its :meth:`~ssmis.data.layouts.base.Layout.write_example` copy.

The config validator asks this registry for a layout's rules; the registry and its layouts never
import the config module (at import time), the engine or the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssmis.data.cases import Catalog
from ssmis.data.layouts.abdomenct1k import AbdomenCT1K
from ssmis.data.layouts.acdc_h5 import ACDCH5
from ssmis.data.layouts.acdc_nifti import ACDCNifti
from ssmis.data.layouts.base import CaseEntry, Layout
from ssmis.data.layouts.brats_h5 import BraTSH5
from ssmis.data.layouts.catalog import CatalogLayout
from ssmis.data.layouts.hrf import HRFLayout
from ssmis.data.layouts.images import ImagesLayout
from ssmis.data.layouts.la_h5 import LAH5
from ssmis.data.layouts.nifti import NiftiLayout
from ssmis.data.layouts.pancreas_h5 import PancreasH5
from ssmis.data.layouts.prepared import PreparedLayout
from ssmis.errors import SSMISError

LAYOUTS: dict[str, type[Layout]] = {}


def register(cls: type[Layout]) -> type[Layout]:
    """Add a layout class under its ``name`` (usable as a decorator by plug-ins).

    Raises:
        ValueError: the class has no name.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    LAYOUTS[cls.name] = cls
    return cls


#: in detection order: the most specific marker files first, the loose image folders last
_BUILTIN: tuple[type[Layout], ...] = (PreparedLayout, NiftiLayout, ACDCH5, LAH5, BraTSH5,
                                      PancreasH5, AbdomenCT1K,
                                      ACDCNifti,
                                      HRFLayout,
                                      ImagesLayout)
for _cls in _BUILTIN:
    register(_cls)


def get_layout(name: str) -> type[Layout]:
    """The layout class registered as ``name``.

    Raises:
        SSMISError: ``data.layout: unknown layout '<name>'; expected one of: ...``.
    """
    try:
        return LAYOUTS[name]
    except KeyError:
        valid = ", ".join(sorted(LAYOUTS))
        raise SSMISError(f"data.layout: unknown layout '{name}'; expected one of: "
                         f"{valid}") from None


def detect_layout(root: Path) -> str | None:
    """The name of the first registered layout whose marker files are under ``root``, or
    None."""
    root = Path(root)
    for cls in LAYOUTS.values():
        if cls.detect(root):
            return cls.name
    return None


def find_layout(root: Path, images_dir: str = "images") -> str:
    """:func:`detect_layout` for a folder the user named (``images_dir``: the images folder
    of an ``images`` dataset named otherwise).

    Raises:
        SSMISError: ``root`` is missing, a file, or matches no layout.
    """
    root = Path(root)
    if root.is_file():
        raise SSMISError(f"{root}: expected a dataset folder, got a file")
    if not root.is_dir():
        raise SSMISError(f"{root}: folder not found")
    found = detect_layout(root)
    if found is None and images_dir != "images" and (
            (root / images_dir).is_dir()
            or any((d / images_dir).is_dir() for d in root.iterdir() if d.is_dir())):
        found = "images"
    if found is None:
        raise SSMISError(f"{root}: unknown dataset layout (expected one of the registered "
                         f"layouts: {', '.join(sorted(LAYOUTS))}; `ssmis data layouts` says "
                         "how each stores a dataset)")
    return found


def scan_catalog(layout: str, root: Path, data_cfg: Any = None,
                 problems: list[str] | None = None) -> Catalog:
    """Catalog of the cases under ``root`` by the registered layout ``layout`` (a
    :class:`CatalogLayout`); ``data_cfg`` supplies folder names; with ``problems``, fixable
    problems are collected instead of raised.

    Raises:
        SSMISError: ``root`` is not a folder, or the layout has no case catalog.
    """
    root = Path(root)
    if not root.is_dir():
        raise SSMISError(f"data.root: folder {root} not found")
    cls = get_layout(layout)
    if not issubclass(cls, CatalogLayout):
        raise SSMISError(f"layout '{layout}' has no case catalog")
    return cls.scan(root, data_cfg, problems)


__all__ = ["LAYOUTS", "CaseEntry", "CatalogLayout", "Layout", "detect_layout", "find_layout",
           "get_layout", "scan_catalog",
           "register"]
