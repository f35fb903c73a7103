"""The import floors of the package (docs/architecture.md): a module imports only from its own
floor or the floors below, so there is no import circle and no arrow back up. Imports inside
functions and under TYPE_CHECKING count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ssmis"

#: floor of each top-level room of ssmis (docs/architecture.md): a room imports rooms of lower
#: floors only
FLOORS: dict[str, int] = {
    "errors": 1, "validation": 1, "optim": 1, "mixing": 1, "ramps": 1, "losses": 1,
    "components": 1,
    "atomic": 2, "exits": 2, "models": 2,
    "data": 3,
    "config": 4,
    "methods": 5,
    "eval": 6, "experiment": 6,
    "engine": 7,
    "reproduce": 8, "predict": 8, "datatools": 8, "demo": 8,
    "cli": 9, "__main__": 10, "__init__": 10,
}


def _room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "ssmis":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "ssmis":  # from ssmis import x
            found += [(node.lineno, f"ssmis.{alias.name}") for alias in node.names
                      if not alias.name.startswith("__")]  # __version__: the package face
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def test_every_room_has_a_floor() -> None:
    rooms = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in _modules()}
    assert rooms <= set(FLOORS), sorted(rooms - set(FLOORS))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_import_runs_back_up_a_floor(path: Path) -> None:
    room = path.relative_to(SRC).parts[0].removesuffix(".py")
    floor = FLOORS[room]
    for line, module in _imports(path):
        target = _room(module)
        if target is None or target == room:
            continue
        assert FLOORS[target] < floor or (FLOORS[target] == floor and room == "__init__"), (
            f"{path.relative_to(SRC)}:{line} imports {module} (floor {FLOORS[target]}) from "
            f"floor {floor}")
