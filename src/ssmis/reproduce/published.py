"""The registry of published results: one YAML file per paper table, shipped with the package.

Each file (``ssmis/reproduce/published/*.yaml``) holds a paper table as the paper prints it,
with its source, the dataset, the labeled settings and, per row, the method as printed, the
ssmis method that reruns it (``null`` when ssmis does not implement it) and the Dice, Jaccard
(percent), HD95 and ASD (the paper's units, stated in ``metrics``). Numbers are facts carried
from ``shared/published/``; a value the paper does not give is ``null``, never zero.

A table is *runnable* when ssmis has a layout and a config folder for its dataset
(``config_dir`` under the repository's ``configs/``); otherwise ``not_runnable_reason`` says why.
``not_transcribed.yaml`` lists the tables known to exist whose numbers are not here.

The schema is checked with pydantic when a file is loaded; a bad file is one line naming the
file and the field (:class:`ssmis.errors.SSMISError`).
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ssmis.errors import SSMISError

__all__ = [
    "METRIC_KEYS",
    "NotTranscribed",
    "PublishedRow",
    "PublishedTable",
    "Setting",
    "find_table",
    "load_not_transcribed",
    "load_registry",
    "load_table",
    "registry_dir",
]

SCHEMA = "ssmis-published-1"
#: Metric columns of a published row; dice/jaccard in percent, distances in the table's unit.
METRIC_KEYS: tuple[str, ...] = ("dice", "jaccard", "hd95", "asd")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricDefinition(_Strict):
    """Unit and definition of one metric as the paper's code computes it."""

    unit: str
    definition: str
    hd95_mode: Literal["medpy", "monai", "unknown"] | None = None


class PublishedRow(_Strict):
    """One printed row: the method as printed, the ssmis method (or None) and its numbers."""

    method: str
    ssmis: str | None = None
    unlabeled: int | None = None
    dice: float | None = Field(default=None, ge=0, le=100)
    jaccard: float | None = Field(default=None, ge=0, le=100)
    hd95: float | None = Field(default=None, ge=0)
    asd: float | None = Field(default=None, ge=0)
    per_domain_dice: dict[str, float] | None = None

    def value(self, metric: str) -> float | None:
        """The printed number of ``metric`` (one of :data:`METRIC_KEYS`), None if not given."""
        return getattr(self, metric)


class Setting(_Strict):
    """One labeled setting of a table (e.g. ACDC with 3 labeled patients) and its rows."""

    labeled: int | str
    unlabeled: int | None = None
    rows: list[PublishedRow] = Field(min_length=1)

    @property
    def key(self) -> str:
        return str(self.labeled)


class PublishedTable(_Strict):
    """A paper table as data (see the module docstring for the file format)."""

    schema_: Literal["ssmis-published-1"] = Field(alias="schema")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    paper: str
    table: str
    source: str = Field(min_length=10)
    dataset: str
    layout: str | None
    runnable: bool
    not_runnable_reason: str | None = None
    config_dir: str | None = None
    labeled_key: str | None = None
    labeled_unit: str
    domains: list[str] | None = None
    metrics: dict[Literal["dice", "jaccard", "hd95", "asd"], MetricDefinition]
    empty_rule: Literal["medpy", "nan", "unknown"]
    selection: str
    settings: list[Setting] = Field(min_length=1)
    path: Path | None = Field(default=None, exclude=True)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check(self) -> PublishedTable:
        if set(self.metrics) != set(METRIC_KEYS):
            raise ValueError(f"metrics: expected definitions of {', '.join(METRIC_KEYS)}")
        if self.runnable:
            if self.layout is None or not self.config_dir or not self.labeled_key:
                raise ValueError("runnable: a runnable table needs layout, config_dir and "
                                 "labeled_key")
            if self.not_runnable_reason:
                raise ValueError("not_runnable_reason: given for a runnable table")
        elif not self.not_runnable_reason:
            raise ValueError("not_runnable_reason: required when runnable is false")
        keys = [s.key for s in self.settings]
        if len(set(keys)) != len(keys):
            raise ValueError(f"settings: labeled settings repeat ({keys})")
        for s in self.settings:
            names = [r.method for r in s.rows]
            if len(set(names)) != len(names):
                raise ValueError(f"settings[{s.key}].rows: a method is printed twice")
            if self.domains:
                for r in s.rows:
                    if r.per_domain_dice is not None and list(r.per_domain_dice) != self.domains:
                        raise ValueError(f"settings[{s.key}] {r.method}: per_domain_dice "
                                         f"expected the domains {self.domains}")
        return self

    @property
    def hd95_mode(self) -> str:
        """How the paper's code computes HD95 ('medpy', 'monai' or 'unknown')."""
        return self.metrics["hd95"].hd95_mode or "unknown"

    def setting(self, labeled: str | int) -> Setting:
        """The setting with this labeled count; SSMISError naming the ones there are."""
        for s in self.settings:
            if s.key == str(labeled):
                return s
        raise SSMISError(f"--labeled {labeled}: table {self.id} has the labeled settings "
                         f"{', '.join(s.key for s in self.settings)}")

    def ssmis_methods(self, setting: Setting | None = None) -> list[str]:
        """The ssmis methods that rerun rows of the table (or of one setting), first-seen order."""
        settings = [setting] if setting is not None else self.settings
        return list(dict.fromkeys(r.ssmis for s in settings for r in s.rows if r.ssmis))

    @property
    def title(self) -> str:
        return f"{self.paper}, Table {self.table}: {self.dataset}"


class NotTranscribed(_Strict):
    """A published table known to exist whose numbers are not in the registry, and why."""

    paper: str
    table: str
    dataset: str
    reason: str


def registry_dir() -> Path:
    """The folder of the shipped table files (package data)."""
    return Path(str(resources.files("ssmis.reproduce") / "published"))


def _read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as err:
        raise SSMISError(f"{path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise SSMISError(f"{path}: not valid YAML{where}") from None


def _field_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or "file"
    msg = first.get("msg", "invalid").removeprefix("Value error, ")
    return f"{loc}: {msg}"


def load_table(path: Path) -> PublishedTable:
    """Read and validate one table file; SSMISError ``<file>: <field>: <what was expected>``."""
    path = Path(path)
    raw = _read(path)
    if not isinstance(raw, dict):
        raise SSMISError(f"{path}: expected a mapping with schema: {SCHEMA}")
    if raw.get("schema") != SCHEMA:
        raise SSMISError(f"{path}: schema: expected '{SCHEMA}', got {raw.get('schema')!r}")
    try:
        table = PublishedTable.model_validate({**raw, "path": path})
    except ValidationError as err:
        raise SSMISError(f"{path}: {_field_error(err)}") from None
    return table


def load_registry(folder: Path | None = None) -> list[PublishedTable]:
    """Every table file of the registry (``*.yaml`` except ``not_transcribed.yaml``), by id;
    SSMISError when two files share an id. Read once per folder and process."""
    return list(_registry(str(folder or registry_dir())))


@functools.lru_cache(maxsize=8)
def _registry(folder_name: str) -> tuple[PublishedTable, ...]:
    folder = Path(folder_name)
    tables = [load_table(p) for p in sorted(folder.glob("*.yaml"))
              if p.name != "not_transcribed.yaml"]
    seen: dict[str, Path | None] = {}
    for t in tables:
        if t.id in seen:
            raise SSMISError(f"{t.path}: id: '{t.id}' is already used by {seen[t.id]}")
        seen[t.id] = t.path
    return tuple(sorted(tables, key=lambda t: t.id))


def load_not_transcribed(folder: Path | None = None) -> list[NotTranscribed]:
    """The tables listed in ``not_transcribed.yaml`` (empty when the file is absent)."""
    path = (folder or registry_dir()) / "not_transcribed.yaml"
    if not path.is_file():
        return []
    raw = _read(path)
    if not isinstance(raw, dict) or raw.get("schema") != "ssmis-not-transcribed-1":
        raise SSMISError(f"{path}: schema: expected 'ssmis-not-transcribed-1'")
    try:
        return [NotTranscribed.model_validate(t) for t in raw.get("tables") or []]
    except ValidationError as err:
        raise SSMISError(f"{path}: tables: {_field_error(err)}") from None


def find_table(name: str, folder: Path | None = None) -> PublishedTable:
    """A table by registry id (``cvbm-acdc``) or by the path of a table YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise SSMISError(f"{path}: table file not found")
        return load_table(path)
    tables = load_registry(folder)
    for t in tables:
        if t.id == name:
            return t
    raise SSMISError(f"TABLE '{name}': not in the registry; expected one of "
                     f"{', '.join(t.id for t in tables)} (see ssmis reproduce --list) or a "
                     "table YAML file")
