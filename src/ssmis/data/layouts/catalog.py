"""Shared logic of the layouts whose cases come from a scanned folder (a
:class:`~ssmis.data.cases.Catalog`) and are read by a :class:`~ssmis.data.reader.CaseReader`:
the user's own data (``nifti``, ``images``, ``prepared``) and public datasets kept in their
released file format."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ssmis.data.cases import Catalog, ignored_lines
from ssmis.data.layouts.base import CaseEntry, Layout
from ssmis.data.layouts.params import MaskValues, SplitRules, layout_option
from ssmis.data.nifti_io import declared_classes_problem
from ssmis.data.normalisation import ChannelNorm
from ssmis.data.reader import CaseReader
from ssmis.data.spacing import check_spacing_order
from ssmis.data.splits import Split, case_groups, multi_case_groups, split_from_catalog
from ssmis.errors import SSMISError


class CatalogLayout(Layout):
    """A layout backed by a scanned catalog; subclasses implement :meth:`scan`.

    The split follows the own-data rules (``data.labeled_count`` / ``labeled_fraction`` /
    ``labeled_cases``, ``val_count`` / ``val_fraction``, ``test_*``; :func:`ssmis.data.splits.
    ssl_split`). 2D training on volumes slices along ``data.slice_axis``.
    """

    class Params(SplitRules, MaskValues):
        """The own-data split rules and ``data.mask_values``."""

    def __init__(self, data: Any) -> None:
        super().__init__(data)
        self._catalog: Catalog | None = None
        self._reader: CaseReader | None = None
        self._normalisation: list[ChannelNorm] | None = None

    @classmethod
    def scan(cls, root: Path, data: Any = None, problems: list[str] | None = None) -> Catalog:
        """Catalog of the cases under ``root`` (``data`` supplies folder names; with a
        ``problems`` list, fixable problems are collected instead of raised)."""
        raise NotImplementedError

    @classmethod
    def config_problem(cls, data: Any) -> str | None:
        if data.split_file is None:
            chosen = [n for n in ("labeled_count", "labeled_fraction", "labeled_cases")
                      if getattr(data, n) is not None]
            if len(chosen) != 1:
                return ("data: give exactly one of labeled_count / labeled_fraction / "
                        f"labeled_cases (or data.split_file) for {cls.name}")
            if data.params.val_count is None and data.params.val_fraction is None:
                return (f"data.val_count: give val_count or val_fraction for {cls.name} "
                        "(validation cases carved from labeled cases)")
        return mask_classes_problem(data) or super().config_problem(data)

    @property
    def catalog(self) -> Catalog:
        """The scanned catalog (scanned once)."""
        if self._catalog is None:
            if not self.root.is_dir():
                raise SSMISError(f"data.root: folder {self.root} not found")
            self._catalog = self.scan(self.root, self.data)
        return self._catalog

    @classmethod
    def make_reader(cls, catalog: Catalog, data: Any, slice_axis: int | None = None
                    ) -> CaseReader:
        """The case reader of this layout's files (``ssmis data inspect`` uses it too);
        layouts that decode their labels their own way return a subclass."""
        return CaseReader(catalog, data, slice_axis=slice_axis)

    @property
    def reader(self) -> CaseReader:
        """Reader with the config's channels, normalisation and mask mapping; 2D models on
        volumes get the ``data.slice_axis`` moved first."""
        if self._reader is None:
            axis = self.data.slice_axis if self.data.spatial_dims == 2 else None
            self._reader = self.make_reader(self.catalog, self.data, slice_axis=axis)
        return self._reader

    def normalisation(self) -> list[ChannelNorm]:
        """The reader's records (:meth:`ssmis.data.reader.CaseReader.normalisation`), resolved
        once (``scale`` reads the header of every case)."""
        if self._normalisation is None:
            self._normalisation = self.reader.normalisation(self.data)
        return self._normalisation

    def data_notes(self) -> list[str]:
        """The entries of the dataset's folders that no case uses, with the reason."""
        return ignored_lines(self.catalog)

    def cases(self) -> list[CaseEntry]:
        """Every case, its group by ``data.group_by`` (:func:`ssmis.data.splits.case_groups`)."""
        groups = case_groups(list(self.catalog.cases), layout_option(self.data, "group_by", "auto"))
        return [CaseEntry(c.case, groups[c.case], c.subset, c.label is not None, c.domain)
                for c in self.catalog.cases.values()]

    def protocol_split(self) -> Split:
        return split_from_catalog(self.catalog, self.data)

    def check_split(self, split: Split, source: str) -> None:
        """Disjoint lists; every id exists; labeled, val and test cases have labels; no group
        (patient, by ``data.group_by`` unless the file records its groups) crosses splits."""
        if not split.groups:
            ids = [c for name in ("labeled", "unlabeled", "val", "test")
                   for c in getattr(split, name)]
            split.groups = multi_case_groups(
                case_groups(ids, layout_option(self.data, "group_by", "auto")))
        try:
            super().check_split(split, source)
        except SSMISError as err:
            raise SSMISError(f"{source}: {err}") from None
        catalog = self.catalog
        for name in ("labeled", "unlabeled", "val", "test"):
            for case in getattr(split, name):
                if case not in catalog.cases:
                    raise SSMISError(f"{source}: case '{case}' ({name}) is not in "
                                     f"{catalog.root}")
                if name != "unlabeled" and catalog.cases[case].label is None:
                    raise SSMISError(f"{source}: case '{case}' is in '{name}' but has no label")

    def check_files(self, split: Split, need_unlabeled: bool) -> list[str] | None:
        """Headers of every case first (channels, shapes, image/label agreement), then the
        spacing's axis order, then the values."""
        reader = self.reader
        declared = declared_classes_problem(self.catalog, self.data.num_classes,
                                            layout_option(self.data, "mask_values"))
        if declared is not None:
            raise SSMISError(declared)
        groups = [(split.labeled, True), (split.val, True), (split.test, True)]
        if need_unlabeled:
            groups.append((split.unlabeled, False))
        for ids, with_label in groups:
            for case in ids:
                shape = reader.spatial_shape(case, with_label=with_label)
                if self.data.spatial_dims == 3 and len(shape) != 3:
                    info = reader.catalog.get(case)
                    raise SSMISError(f"{info.images[0]}: shape {tuple(shape)}, a 3D model "
                                     f"(data.patch_size {self.data.patch_size}) needs 3D "
                                     "volumes")
        if self.data.spacing and self.data.spacing_check:
            info = reader.catalog.get(split.val[0])
            check_spacing_order(self.data.spacing, reader.spatial_shape(split.val[0]),
                                str(info.images[0]))
        for ids, with_label in groups:
            for case in ids:
                reader.load_raw(case, with_label=with_label)
        return resample_notes(reader.resampled)

    def _items(self, ids: list[str]) -> list[tuple[str, int | None]]:
        """Training items: whole cases (3D, 2D pictures) or ``(case, slice)`` of volumes."""
        if self.data.spatial_dims == 3:
            return [(case, None) for case in ids]
        items: list[tuple[str, int | None]] = []
        for case in ids:
            if len(self.reader.spatial_shape(case)) == 2:
                items.append((case, None))
            else:
                items.extend((case, k) for k in range(self.reader.num_slices(case)))
        return items

    def train_dataset(self, ids: list[str], transform, with_label: bool):
        from ssmis.data.datasets import CaseDataset

        return CaseDataset(self.reader, self._items(ids), transform, with_label=with_label,
                           cache=self.data.cache)

    def eval_cases(self, ids: list[str]) -> Iterator:
        """Whole cases, one at a time; single-channel images without their channel axis."""
        from ssmis.data.datasets import EvalCase

        for case in ids:
            arrays = self.reader.load(case, with_label=True)
            assert arrays.label is not None
            image = arrays.image[0] if arrays.image.shape[0] == 1 else arrays.image
            yield EvalCase(case=case, image=image, label=arrays.label, spacing=arrays.spacing,
                           domain=arrays.domain, roi=arrays.roi)


def mask_classes_problem(data: Any) -> str | None:
    """A mapped class (``data.mask_values`` / ``mask_rgb_classes``) outside ``0..num_classes-1``
    as one line, or None."""
    check = getattr(getattr(data, "params", None), "classes_problem", None)
    return check(data.num_classes) if check is not None else None


def resample_notes(resampled: dict[str, str]) -> list[str]:
    """One warning line on labels put onto their image's grid (``data.label_geometry:
    resample``), naming up to five cases and why; empty when none was."""
    if not resampled:
        return []
    shown = "; ".join(f"{case} ({why})" for case, why in list(resampled.items())[:5])
    more = f" and {len(resampled) - 5} more" if len(resampled) > 5 else ""
    return [f"warning: {len(resampled)} label(s) resampled onto their image grid "
            f"(data.label_geometry: resample, nearest neighbour): {shown}{more}; their scores "
            "depend on that resampling"]
