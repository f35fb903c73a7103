"""``prepared``: the output of ``ssmis data prepare`` (one compressed ``.npz`` per case with
the normalised image and the label, plus ``ssmis_prepared.json``), so training decodes no
NIfTI/JPEG (:func:`ssmis.data.owndata.prepare_dataset`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssmis.data.layouts.catalog import CatalogLayout
from ssmis.data.owndata import PREPARED_MANIFEST, Catalog, scan_prepared


class PreparedLayout(CatalogLayout):
    """A prepared cache of a ``nifti`` or ``images`` dataset."""

    name = "prepared"
    description = "`ssmis data prepare` output: cases/*.npz + ssmis_prepared.json"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / PREPARED_MANIFEST).is_file()

    @classmethod
    def scan(cls, root: Path, data: Any = None, problems: list[str] | None = None) -> Catalog:
        return scan_prepared(root)

    @classmethod
    def write_example(cls, root: Path) -> dict[str, Any]:
        from ssmis.config import DataConfig  # at call time: the config asks this registry
        from ssmis.data.layouts.nifti import NiftiLayout
        from ssmis.data.owndata import prepare_dataset

        source = Path(f"{root}_source")
        data = NiftiLayout.write_example(source)
        settings = DataConfig.model_validate(data)
        prepare_dataset(NiftiLayout.scan(source), settings, root, progress=False)
        return {**data, "layout": cls.name, "root": str(root)}
