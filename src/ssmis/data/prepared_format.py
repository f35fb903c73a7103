"""The on-disk format of ``ssmis data prepare`` (one compressed ``.npz`` per case plus the
``ssmis_prepared.json`` manifest): names, and the normalisation records a manifest holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssmis.data.normalisation import ChannelNorm

#: the manifest file of a prepared dataset, and its format tag
PREPARED_MANIFEST = "ssmis_prepared.json"
PREPARED_FORMAT = "ssmis-prepared-1"


def case_file_name(case: str) -> str:
    """The ``.npz`` file name of a case id (``/`` of subset ids as ``__``)."""
    return case.replace("/", "__") + ".npz"


def prepared_normalisation(manifest: dict[str, Any], root: Path) -> list[ChannelNorm]:
    """The normalisation records of a prepared dataset (already applied in its files).

    Manifests of ssmis < 0.3 name the schemes only: their numbers (the ``scale`` divisor)
    are unknown and the record says so."""
    where = f"{root / PREPARED_MANIFEST} normalisation"
    if manifest.get("normalisation"):
        return [ChannelNorm.from_dict({**r, "stored": True}, where)
                for r in manifest["normalisation"]]
    window = manifest.get("intensity_window", [-1000.0, 1000.0])
    return [ChannelNorm(n, clip=(float(window[0]), float(window[1])) if n == "ct" else None,
                        stored=True, source=f"{root / PREPARED_MANIFEST} (scheme only)")
            for n in manifest.get("normalization", [])]
