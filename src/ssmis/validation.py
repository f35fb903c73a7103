"""One-line messages for pydantic validation errors, shared by the experiment config and the
params classes of methods and layouts (which must not import the config module)."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError


def _valid_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section at ``loc`` (used to suggest a key for a typo)."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = annotation if isinstance(annotation, type) else None
        if current is None:
            return []
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line: the field, what is wrong, what was expected."""
    first = err.errors()[0]
    loc = tuple(first.get("loc", ()))
    field = ".".join(str(p) for p in loc) or "config"
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        valid = _valid_keys(model, loc)
        hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        msg = f"{source}: {field}: unknown key"
        if hint:
            prefix = "".join(f"{p}." for p in loc[:-1])
            msg += f" (did you mean '{prefix}{hint[0]}'?)"
        elif valid:
            msg += f"; valid keys here: {', '.join(valid)}"
        return msg
    if kind == "missing":
        return f"{source}: {field}: required field is missing"
    text = first.get("msg", "invalid value")
    text = text.removeprefix("Value error, ")
    if "input" in first and kind != "value_error" and not isinstance(first["input"], dict):
        text += f" (got {first['input']!r})"
    if kind == "value_error":  # our own validators already name the field
        return f"{source}: {text}"
    return f"{source}: {field}: {text}"
