"""Registry of data layouts by name (``data.layout``). A new layout is one module with a
:class:`~ssmis.data.layouts.base.Layout` subclass plus one line in ``_BUILTIN``; the contract
test then runs it on its :meth:`~ssmis.data.layouts.base.Layout.write_example` copy.

The config validator asks this registry for a layout's rules; the registry and its layouts never
import the config module (at import time), the engine or the CLI.
"""

from __future__ import annotations

from pathlib import Path

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


__all__ = ["LAYOUTS", "CaseEntry", "CatalogLayout", "Layout", "detect_layout", "get_layout",
           "register"]
