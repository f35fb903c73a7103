"""Reading a layout's option from code shared by several layouts (numpy-free, no imports)."""

from __future__ import annotations

from typing import Any


def layout_option(data: Any, name: str, default: Any = None) -> Any:
    """``data.params.<name>`` of a validated ``data`` section (:class:`ssmis.config.DataConfig`),
    or ``default`` when its layout does not take the option; a plain settings object (no
    ``params``) gives its own attribute. For code shared by several layouts (a reader, the
    catalog's checks, an augmentation)."""
    return getattr(getattr(data, "params", data), name, default)
