"""The one interface every data layout meets (``data.layout``), like :class:`ssmis.methods.Method`.

A layout knows one way of storing a dataset on disk. The engine only asks it, through this
interface, for:

* :meth:`Layout.cases`: every case with its group (patient), domain, subset and whether it has
  a label (``ssmis data inspect``, group-aware splits, the contract test);
* :meth:`Layout.protocol_split`: the split its literature uses (list files, or the own-data rules
  of ``data.labeled_*`` / ``val_*`` / ``test_*``); a ``data.split_file`` replaces it and is checked
  by :meth:`Layout.check_split`;
* :meth:`Layout.check_files`: every file a run will read, headers first then values, before the
  run folder exists;
* :meth:`Layout.train_dataset`: training items ``{"image": (C, *patch) float32, "label":
  (*patch) int64, "case": id}`` addressed by the two-stream sampler's ``(index, seed)`` pairs;
* :meth:`Layout.eval_cases`: whole evaluation cases (:class:`~ssmis.data.datasets.EvalCase`:
  image, label, spacing in mm in array-axis order, domain), one at a time.

A layout owns its options: :attr:`Layout.Params` (a pydantic model, shared pieces in
:mod:`ssmis.data.layouts.params`) validates the ``data`` keys beyond the generic ones, and
config-time rules that involve generic fields (required keys, patch dimensionality, class
ranges) are :meth:`Layout.config_problem`, asked by :class:`ssmis.config.DataConfig` before
anything is read.
:meth:`Layout.write_example` writes a tiny synthetic copy in the exact on-disk format; the
contract test (``tests/test_layouts_contract.py``) runs every registered layout on it, so a new
layout is one module plus one line in :data:`ssmis.data.layouts.LAYOUTS` and is tested.
A layout never imports the engine, the CLI or the config module (it receives the validated
``DataConfig`` and reads its fields).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ssmis.data.layouts.params import LayoutParams, layout_option
from ssmis.data.normalisation import ChannelNorm
from ssmis.data.splits import Split
from ssmis.errors import SSMISError


@dataclass(frozen=True)
class CaseEntry:
    """One case of a dataset as its layout lists it.

    ``subset`` is where the files put it: ``train`` (training pool), ``val`` / ``test`` (given
    by the layout's lists), ``unlabeled`` (an unlabeled-only folder). ``group`` is the patient
    (or other unit) whose cases must stay in one split; ``domain`` the site/scanner, or None.
    """

    case: str
    group: str
    subset: str
    labeled: bool
    domain: str | None = None


class Layout:
    """A dataset layout: listing, splitting, checking and reading cases of ``data.root``.

    Subclasses set :attr:`name` (the ``data.layout`` value), :attr:`patch_dims` (2 and/or 3),
    :attr:`labeled_key` (the config key a sweep sets for 'how many labeled') and implement the
    methods below. ``data`` is a validated :class:`ssmis.config.DataConfig`.
    """

    name: ClassVar[str] = ""
    #: the ``data`` options this layout takes besides the generic ones (validated from the
    #: same flat ``data`` mapping; :mod:`ssmis.data.layouts.params`)
    Params: ClassVar[type[LayoutParams]] = LayoutParams
    #: one line for ``DataConfig.layout``'s description and ``ssmis data inspect``
    description: ClassVar[str] = ""
    #: allowed lengths of ``data.patch_size`` (2: 2D models, 3: 3D models)
    patch_dims: ClassVar[tuple[int, ...]] = (2, 3)
    #: the config key of "how many labeled cases" (``ssmis sweep --labeled``)
    labeled_key: ClassVar[str] = "data.labeled_count"
    #: 2D models with ``data.resize: true``: what ``eval.zoom_back: auto`` zooms back to the
    #: image size, ``probabilities`` (bilinear, then argmax) or ``labels`` (nearest neighbour,
    #: for a layout whose published numbers were computed that way)
    zoom_back: ClassVar[str] = "probabilities"
    #: layouts whose files hold intensities normalised by the dataset's own preprocessing
    #: (the h5 copies of the literature): what produced them, per channel
    stored_normalisation: ClassVar[ChannelNorm | None] = None

    def __init__(self, data: Any) -> None:
        self.data = data
        self.root = Path(data.root)

    # -- config time -----------------------------------------------------------------------
    @classmethod
    def config_problem(cls, data: Any) -> str | None:
        """A one-line problem with the ``data`` section for this layout, or None.

        The default checks the patch dimensionality against :attr:`patch_dims`.
        """
        if len(data.patch_size) not in cls.patch_dims:
            want = " or ".join({2: "2 values [H, W]", 3: "3 values [X, Y, Z]"}[d]
                               for d in cls.patch_dims)
            return f"data.patch_size: expected {want} for {cls.name}"
        return None

    @classmethod
    def detect(cls, root: Path) -> bool:
        """Whether ``root`` looks like this layout (``ssmis data inspect`` without a config)."""
        return False

    @classmethod
    def write_example(cls, root: Path) -> dict[str, Any]:
        """Write a tiny synthetic copy in this layout's exact format under ``root`` and return
        the ``data`` section (a dict) that trains on it with a 2-labeled-case split."""
        raise NotImplementedError(f"layout {cls.name} has no example")

    # -- the interface the engine asks -----------------------------------------------------
    def cases(self) -> list[CaseEntry]:
        """Every case under ``data.root``, in the layout's order."""
        raise NotImplementedError

    def protocol_split(self) -> Split:
        """The split of this layout's protocol (its list files or the ``data`` split rules).

        Raises:
            SSMISError: a missing list, a count out of range, overlapping lists.
        """
        raise NotImplementedError

    def check_split(self, split: Split, source: str) -> None:
        """Check a split read from ``source`` (``data.split_file``) against this dataset.

        The default checks that the lists are disjoint (validation may sit in the unlabeled
        pool with ``data.val_pool: unlabeled``).
        """
        split.check_disjoint(layout_option(self.data, "val_pool", "held_out") == "unlabeled")

    def check_files(self, split: Split, need_unlabeled: bool) -> list[str] | None:
        """Check every file the run reads (existence, keys, shapes, then values).

        Returns notes the user should see in the run log (e.g. labels resampled onto their
        image grid), or None.

        Raises:
            SSMISError: one line naming the file.
        """
        raise NotImplementedError

    def normalisation(self) -> list[ChannelNorm]:
        """How the run's input intensities are normalised, one record per channel (logged,
        stored in the run's ``config.yaml`` as ``data.resolved_normalization`` and applied by
        ``ssmis predict`` to new files). The default is :attr:`stored_normalisation`.

        Raises:
            SSMISError: the layout does not say (a layout without a record cannot be
                predicted from raw files).
        """
        if self.stored_normalisation is None:
            raise SSMISError(f"data.layout {self.name}: the layout records no normalisation")
        return [self.stored_normalisation] * int(self.data.in_channels)

    def legacy_schemes(self) -> list[str] | None:
        """The per-channel schemes ssmis resolved ``data.normalization: auto`` to before runs
        recorded their normalisation, when that rule differs from today's for this layout;
        None when it does not (runs of that time are read as they were trained)."""
        return None

    def data_notes(self) -> list[str]:
        """Lines for the run log and ``ssmis data inspect`` about how the files are read
        (entries of the dataset folder that are not read, with the reason); default none."""
        return []

    def train_dataset(self, ids: list[str], transform: Any, with_label: bool) -> Any:
        """A map-style dataset of training items of ``ids`` (see the module docstring)."""
        raise NotImplementedError

    def eval_cases(self, ids: list[str]) -> Iterator[Any]:
        """:class:`~ssmis.data.datasets.EvalCase` of each id, loaded lazily in order."""
        raise NotImplementedError

    # -- shared helpers --------------------------------------------------------------------
    def split(self) -> Split:
        """``data.split_file`` when set (checked), else :meth:`protocol_split`."""
        split_file = getattr(self.data, "split_file", None)
        if split_file is not None:
            split = Split.load(split_file)
            self.check_split(split, str(split_file))
            return split
        return self.protocol_split()

    def check_split_nonempty(self, split: Split, need_unlabeled: bool) -> None:
        """Labeled, validation and test lists non-empty; unlabeled too when the method needs it.

        Raises:
            SSMISError: naming the empty list and ``data.root``.
        """
        for name in ("labeled", "val", "test"):
            if not getattr(split, name):
                raise SSMISError(f"split '{name}' is empty (data.root = {self.root})")
        if need_unlabeled and not split.unlabeled:
            raise SSMISError("split 'unlabeled' is empty: this method needs unlabeled cases")
