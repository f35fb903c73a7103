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
