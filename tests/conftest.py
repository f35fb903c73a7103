"""Shared fixtures: a tiny phantom dataset in the ACDC h5 layout and configs that train fast."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for tiny tensors: thread start-up dominates and CI has two cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ssmis.data.phantoms import make_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    make_phantom_dataset(root, num_train_volumes=4, num_val=2, num_test=2, slices=4,
                         size=(48, 48), seed=3)
    return root


def tiny_config(root: Path, out: Path, **train: Any) -> dict[str, Any]:
    """A raw config dict that trains a 2D U-Net for a few iterations on 32x32 phantoms."""
    return {
        "name": "tiny",
        "seed": 7,
        "output_dir": str(out),
        "data": {"layout": "acdc_h5", "root": str(root), "num_classes": 4,
                 "class_names": {1: "RV", 2: "Myo", 3: "LV"}, "labeled_patients": 2,
                 "patch_size": [32, 32]},
        "model": {"name": "unet2d"},
        "method": {"name": "supervised"},
        "train": {"iterations": 4, "batch_size": 2, "val_every": 2, "lr": 0.01, **train},
        "eval": {"unit": "voxel", "overlay_cases": 2},
    }


def tiny_method_config(method: str, params: dict[str, Any], kind: str = "2d",
                       root: Path = Path("."), iterations: int = 4) -> Any:
    """A validated config for building ``method`` on tiny tensors (no data is read):
    a narrow U-Net on 32x32 (4 classes) or a narrow V-Net on 32x32x16 (2 classes)."""
    from ssmis.config import validate_config

    if kind == "2d":
        data = {"layout": "acdc_h5", "root": str(root), "num_classes": 4,
                "labeled_patients": 1, "patch_size": [32, 32]}
        model = {"name": "unet2d", "options": {"widths": [4, 4, 8, 8, 8]}}
    else:
        data = {"layout": "la_h5", "root": str(root), "num_classes": 2, "labeled_count": 1,
                "val_count": 1, "patch_size": [32, 32, 16]}
        model = {"name": "vnet3d", "options": {"n_filters": 2}}
    return validate_config({"data": data, "model": model,
                            "method": {"name": method, "params": params},
                            "train": {"iterations": iterations, "batch_size": 2,
                                      "unlabeled_batch_size": 2, "device": "cpu"}})
