"""The SynFoC dataset formats on the image-folder layout: train/test folders per domain,
inverted and three-level grey masks, RGB masks (M&Ms), and the BUSI converter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssmis.config import validate_config
from ssmis.data.converters import convert_busi
from ssmis.engine.data import own_reader, own_split
from ssmis.errors import SSMISError


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def _prostate_like(root: Path) -> Path:
    """Two sites, ProstateSlice format: mask 0 = prostate, 255 = background."""
    rng = np.random.default_rng(0)
    for site in ("BIDMC", "HK"):
        for subset, n in (("train", 4), ("test", 2)):
            for i in range(n):
                mask = np.full((24, 24), 255)
                mask[8:16, 6:14] = 0
                _save(root / site / subset / "image" / f"{i:02d}_01.png",
                      rng.integers(0, 255, (24, 24)))
                _save(root / site / subset / "mask" / f"{i:02d}_01.png", mask)
    return root


def _cfg(root: Path, **data) -> object:
    base = {"layout": "images", "root": str(root), "num_classes": 2,
            "images_dir": "train/image", "masks_dir": "train/mask",
            "test_images_dir": "test/image", "test_masks_dir": "test/mask",
            "mask_values": {0: 1, 255: 0}, "labeled_domain": "BIDMC", "labeled_count": 2,
            "val_count": 1, "patch_size": [24, 24]}
    return validate_config({"data": {**base, **data}, "train": {"iterations": 1,
                                                                "batch_size": 1}})


def test_train_test_folders_per_domain(tmp_path: Path) -> None:
    cfg = _cfg(_prostate_like(tmp_path / "ProstateSlice"))
    split = own_split(cfg)
    assert sorted(split.test) == sorted(f"{s}/test/{i:02d}_01" for s in ("BIDMC", "HK")
                                        for i in range(2))
    assert all(c.startswith("BIDMC/") and "/test/" not in c for c in split.labeled)
    assert {c.split("/")[0] for c in split.unlabeled} == {"BIDMC", "HK"}
    reader = own_reader(cfg)
    arrays = reader.load("HK/test/01_01", with_label=True)
    assert arrays.domain == "HK"
    assert arrays.label.sum() == 64 and arrays.label[10, 10] == 1  # inverted mask decoded


def test_fundus_three_level_masks(tmp_path: Path) -> None:
    root = tmp_path / "Fundus"
    mask = np.full((16, 16), 255)
    mask[4:12, 4:12] = 128
    mask[6:10, 6:10] = 0
    for k in (1, 2):
        for subset in ("train", "test"):
            for i in range(3):
                _save(root / f"Domain{k}" / subset / "ROIs" / "image" / f"g{i}.png",
                      np.full((16, 16, 3), 90))
                _save(root / f"Domain{k}" / subset / "ROIs" / "mask" / f"g{i}.png", mask)
    cfg = _cfg(root, num_classes=3, in_channels=3, images_dir="train/ROIs/image",
               masks_dir="train/ROIs/mask", test_images_dir="test/ROIs/image",
               test_masks_dir="test/ROIs/mask", mask_values={0: 1, 128: 2, 255: 0},
               labeled_domain="Domain1", labeled_count=1, val_count=1)
    arrays = own_reader(cfg).load("Domain2/test/g0", with_label=True)
    assert arrays.image.shape == (3, 16, 16)
    assert (arrays.label == 1).sum() == 16 and (arrays.label == 2).sum() == 48


def test_mnms_rgb_masks(tmp_path: Path) -> None:
    root = tmp_path / "mnms"
    mask = np.zeros((16, 16, 3))
    mask[2:14, 2:14, 1] = 255  # MYO ring (G) ...
    mask[5:11, 5:11, 1] = 0
    mask[5:11, 5:11, 0] = 255  # ... around the LV (R)
    mask[0:2, 0:4, 2] = 255  # RV (B)
    for v in ("vendorA", "vendorB"):
        for subset in ("train", "test"):
            for i in range(3):
                _save(root / v / subset / "image" / f"s{i}.png", np.full((16, 16), 50))
                _save(root / v / subset / "mask" / f"s{i}.png", mask)
    cfg = _cfg(root, num_classes=4, mask_values=None, mask_rgb_classes=[1, 2, 3],
               labeled_domain="vendorA", labeled_count=1, val_count=1)
    label = own_reader(cfg).load("vendorB/test/s1", with_label=True).label
    assert label[8, 8] == 1 and label[3, 3] == 2 and label[0, 0] == 3 and label[15, 15] == 0
    assert sorted(np.unique(label).tolist()) == [0, 1, 2, 3]
    with pytest.raises(SSMISError, match="mask_rgb_classes"):
        _cfg(root, num_classes=4, mask_rgb_classes=[1, 2, 3])  # together with mask_values


def test_busi_converter(tmp_path: Path) -> None:
    src = tmp_path / "Dataset_BUSI_with_GT"
    for cls, n in (("benign", 12), ("malignant", 5), ("normal", 2)):
        for i in range(1, n + 1):
            _save(src / cls / f"{cls} ({i}).png", np.full((12, 10, 3), 20 * i))
            m = np.zeros((12, 10))
            m[1:4, 1:4] = 255
            _save(src / cls / f"{cls} ({i})_mask.png", m)
    extra = np.zeros((12, 10))
    extra[8:10, 6:9] = 255
    _save(src / "benign" / "benign (2)_mask_1.png", extra)
    counts = convert_busi(src, tmp_path / "busi")
    assert counts == {"benign": {"train": 10, "test": 2}, "malignant": {"train": 4, "test": 1}}
    out = tmp_path / "busi"
    assert not (out / "normal").exists()
    # the authors' sorted glob order: 'benign (1)', 'benign (10)', 'benign (11)', 'benign (12)',
    # 'benign (2)', ..., 'benign (9)' -> the last 2 (8, 9) are test
    assert sorted(p.name for p in (out / "benign" / "test" / "images").iterdir()) == [
        "benign_8.png", "benign_9.png"]
    merged = np.asarray(Image.open(out / "benign" / "train" / "masks" / "benign_2.png"))
    assert merged.sum() == 255 * (9 + 6)  # both masks, max-merged
    img = np.asarray(Image.open(out / "benign" / "train" / "images" / "benign_1.png"))
    assert img.ndim == 2 and img.shape == (12, 10)
    cfg = _cfg(out, images_dir="train/images", masks_dir="train/masks",
               test_images_dir="test/images", test_masks_dir="test/masks",
               mask_values={0: 0, 255: 1}, labeled_domain="benign", labeled_count=3,
               labeled_pick="first", val_count=2, val_pool="unlabeled")
    split = own_split(cfg)
    assert sorted(split.test) == ["benign/test/benign_8", "benign/test/benign_9",
                                  "malignant/test/malignant_5"]
    # lb_idxs = range(3) over the authors' order
    assert split.labeled == ["benign/benign_1", "benign/benign_10", "benign/benign_11"]
    with pytest.raises(SSMISError, match="not empty"):
        convert_busi(src, out)


def test_busi_converter_reads_images_and_mask_subfolders(tmp_path: Path) -> None:
    """The GitHub copy: ``<cls>/images/<cls> (n).png`` and ``<cls>/mask/<cls> (n)_mask.png``."""
    src = tmp_path / "data"
    for cls in ("benign", "malignant"):
        for i in range(1, 6):
            _save(src / cls / "images" / f"{cls} ({i}).png", np.full((8, 8, 3), 10 * i))
            m = np.zeros((8, 8))
            m[2:5, 2:5] = 255
            _save(src / cls / "mask" / f"{cls} ({i})_mask.png", m)
    counts = convert_busi(src, tmp_path / "busi")
    assert counts == {"benign": {"train": 4, "test": 1}, "malignant": {"train": 4, "test": 1}}
    mask = np.asarray(Image.open(tmp_path / "busi" / "malignant" / "test" / "masks"
                                 / "malignant_5.png"))
    assert mask.sum() == 255 * 9
    (src / "benign" / "mask" / "benign (3)_mask.png").unlink()
    with pytest.raises(SSMISError, match=r"benign \(3\)\.png: no mask"):
        convert_busi(src, tmp_path / "busi2")


def test_ssmis_data_convert_runs_a_registered_converter(tmp_path: Path, capsys) -> None:
    from ssmis.cli import main

    src = tmp_path / "Dataset_BUSI_with_GT"
    for cls in ("benign", "malignant"):
        for i in range(1, 6):
            _save(src / cls / f"{cls} ({i}).png", np.full((8, 8, 3), 10 * i))
            m = np.zeros((8, 8))
            m[2:5, 2:5] = 255
            _save(src / cls / f"{cls} ({i})_mask.png", m)
    assert main(["data", "convert", "busi", str(src), str(tmp_path / "busi")]) == 0
    assert capsys.readouterr().out.splitlines() == ["benign: 4 train, 1 test",
                                                    "malignant: 4 train, 1 test"]
    assert main(["data", "convert", "isic", str(src), str(tmp_path / "x")]) == 2
    assert "unknown dataset 'isic'; expected one of: busi" in capsys.readouterr().err


def test_synfoc_augmentation_in_the_training_stream(tmp_path: Path) -> None:
    """data.augmentation: synfoc on an RGB images layout: every channel gets the same geometry
    (the transform runs per channel with identically seeded generators), output at the patch
    size; the labeled cases are the first files of the domain, validation from the unlabeled."""
    from ssmis.data.augment import build_augmentation
    from ssmis.data.datasets import CaseDataset
    from ssmis.data.synfoc_aug import SynFoCWeak2D

    root = tmp_path / "Fundus"
    rng = np.random.default_rng(0)
    for k in (1, 2):
        for i in range(5):
            grey = rng.integers(0, 255, (20, 24))
            _save(root / f"Domain{k}" / "train" / "image" / f"n{i}.png",
                  np.stack([grey, grey, grey], -1))
            mask = np.full((20, 24), 255)
            mask[5:15, 6:18] = 0
            _save(root / f"Domain{k}" / "train" / "mask" / f"n{i}.png", mask)
            _save(root / f"Domain{k}" / "test" / "image" / f"n{i}.png", np.zeros((20, 24, 3)))
            _save(root / f"Domain{k}" / "test" / "mask" / f"n{i}.png", mask)
    cfg = _cfg(root, in_channels=3, labeled_domain="Domain1", labeled_count=2,
               labeled_pick="first", val_count=2, val_pool="unlabeled", augmentation="synfoc",
               patch_size=[32, 32])
    split = own_split(cfg)
    assert split.labeled == ["Domain1/n0", "Domain1/n1"]
    assert set(split.val) <= set(split.unlabeled) and len(split.unlabeled) == 8
    transform = build_augmentation(cfg.data.augmentation, cfg.data.patch_size, cfg.data)
    assert isinstance(transform, SynFoCWeak2D)
    ds = CaseDataset(own_reader(cfg), [(c, None) for c in split.labeled], transform,
                     with_label=True)
    for seed in range(6):
        item = ds[(seed % 2, seed)]
        assert item["image"].shape == (3, 32, 32) and item["label"].shape == (32, 32)
        assert (item["image"][0] == item["image"][1]).all()
        assert (item["image"][0] == item["image"][2]).all()
        assert set(item["label"].unique().tolist()) <= {0, 1}
