"""``prepared``: the output of ``ssmis data prepare`` (one compressed ``.npz`` per case with
the normalised image and the label, plus ``ssmis_prepared.json``), so training decodes no
NIfTI/JPEG (:func:`prepare_dataset`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ssmis.atomic import atomic_write, write_json
from ssmis.data.cases import CaseInfo, Catalog
from ssmis.data.layouts.catalog import CatalogLayout
from ssmis.data.options import layout_option
from ssmis.data.prepared_format import PREPARED_FORMAT, PREPARED_MANIFEST, case_file_name
from ssmis.data.reader import CaseReader
from ssmis.errors import SSMISError


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
        from types import SimpleNamespace

        from ssmis.data.layouts.nifti import NiftiLayout

        source = Path(f"{root}_source")
        data = NiftiLayout.write_example(source)
        # the reader's settings of that example (data.* defaults): the layouts never import
        # the config module, which asks this registry
        settings = SimpleNamespace(in_channels=1, num_classes=data["num_classes"],
                                   mask_values=None, intensity_window=[-1000.0, 1000.0],
                                   spacing=None, normalization="auto")
        prepare_dataset(NiftiLayout.scan(source), settings, root, progress=False)
        return {**data, "layout": cls.name, "root": str(root)}


def scan_prepared(root: Path) -> Catalog:
    path = root / PREPARED_MANIFEST
    if not path.is_file():
        raise SSMISError(f"{path}: not found (create it with `ssmis data prepare`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        assert manifest.get("format") == PREPARED_FORMAT
        cases = {
            c["case"]: CaseInfo(c["case"], [root / "cases" / c["file"]],
                                root / "cases" / c["file"] if c["label"] else None,
                                c.get("domain"), c["subset"], tuple(c["shape"]))
            for c in manifest["cases"]
        }
    except Exception as exc:
        raise SSMISError(f"{path}: not a valid prepared-dataset manifest ({exc})") from None
    return Catalog("prepared", root, cases, manifest.get("channel_names", []),
                   {int(k): v for k, v in manifest.get("label_names", {}).items()}, manifest)


def prepare_dataset(catalog: Catalog, data_cfg: Any, out: Path, progress: bool = True,
                    reader: CaseReader | None = None) -> Path:
    """Write every case as ``out/cases/<case>.npz`` (float16 image, uint8 label) + manifest.

    ``reader``: the layout's own reader (``CatalogLayout.make_reader``: e.g. HRF's vessel
    threshold); default a plain :class:`CaseReader` of ``data_cfg``.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SSMISError(f"{out}: output folder exists and is not empty")
    if catalog.kind == "prepared":
        raise SSMISError(f"{catalog.root}: already a prepared dataset")
    reader = reader if reader is not None else CaseReader(catalog, data_cfg)
    for case in catalog.cases:  # headers first: cheap errors before any writing
        reader.spatial_shape(case, with_label=True)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    entries = []
    cases = list(catalog.cases.values())
    iterator = cases
    if progress and len(cases) > 1:
        from tqdm import tqdm

        iterator = tqdm(cases, desc="prepare", unit="case", leave=False)
    for info in iterator:
        arrays = reader.load_raw(info.case, with_label=info.label is not None)
        if np.abs(arrays.image).max(initial=0) > 60000:
            raise SSMISError(f"{info.images[0]}: intensities beyond float16 range after "
                             f"normalization {reader.norms}; choose data.normalization")
        label = arrays.label if arrays.label is not None else np.zeros(0, np.uint8)
        name = case_file_name(info.case)
        fields = {
            "image": arrays.image.astype(np.float16), "label": label.astype(np.uint8),
            "spacing": np.asarray(arrays.spacing or (), dtype=np.float64),
            "roi": arrays.roi.astype(np.uint8) if arrays.roi is not None
            else np.zeros(0, np.uint8),
            "affine": np.asarray(arrays.affine if arrays.affine is not None else (), np.float64)}
        atomic_write(out / "cases" / name,
                     lambda tmp, fields=fields: np.savez_compressed(tmp, **fields))
        entries.append({"case": info.case, "file": name, "label": info.label is not None,
                        "domain": info.domain, "subset": info.subset,
                        "shape": list(arrays.image.shape[1:]),
                        "source": [str(p) for p in info.images]})
    manifest = {
        "format": PREPARED_FORMAT, "source": str(catalog.root), "source_layout": catalog.layout,
        "in_channels": data_cfg.in_channels, "normalization": reader.norms,
        "normalisation": [n.as_dict() for n in reader.normalisation(data_cfg)],
        "intensity_window": list(reader.window),
        "mask_values": layout_option(data_cfg, "mask_values"),
        "num_classes": data_cfg.num_classes, "channel_names": catalog.channel_names,
        "label_names": {str(k): v for k, v in catalog.label_names.items()}, "cases": entries,
    }
    write_json(out / PREPARED_MANIFEST, manifest, indent=1)  # last: marks the copy complete
    return out
