"""Own data end to end through the CLI: nnU-Net NIfTI and PNG folders with domains.

inspect -> split -> train (a few iterations) -> predict -> evaluate, and each broken input
stopping with one line that names the file (exit 2) before a run folder exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from PIL import Image

from ssmis.cli import main

SPACING = (1.0, 1.25, 3.0)


def _blob(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    grid = np.indices(shape).astype(np.float32)
    center = [s / 2 + rng.uniform(-2, 2) for s in shape]
    radius = min(shape) / 3.5
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, center, strict=True)))
    return (dist < radius).astype(np.uint8)


def _save_nii(path: Path, data: np.ndarray, dtype=np.float32) -> None:
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 2.0)
    nib.save(nib.Nifti1Image(data.astype(dtype), affine), str(path))


def make_nifti(root: Path, seed: int = 0) -> Path:
    """6 labeled + 2 unlabeled training cases (domains A/B), 2 labeled test, 1 extra unlabeled."""
    rng = np.random.default_rng(seed)
    for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "imagesUnlabeled"):
        (root / d).mkdir(parents=True)
    shape = (24, 20, 12)
    domains = {}
    cases = [(f"case{i:02d}", "imagesTr", "labelsTr" if i < 6 else None) for i in range(8)]
    cases += [("test00", "imagesTs", "labelsTs"), ("test01", "imagesTs", "labelsTs"),
              ("extra00", "imagesUnlabeled", None)]
    for i, (case, images, labels) in enumerate(cases):
        label = _blob(shape, rng)
        image = 200.0 + 300.0 * label + rng.normal(0, 20, shape)
        _save_nii(root / images / f"{case}_0000.nii.gz", image)
        if labels:
            _save_nii(root / labels / f"{case}.nii.gz", label, np.uint8)
        domains[case] = "A" if i % 2 == 0 else "B"
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "blob": 1},
        "numTraining": 8, "file_ending": ".nii.gz", "domains": domains}))
    return root


def make_images(root: Path, seed: int = 0) -> Path:
    """Two domains, 4 labeled RGB images each (masks 0/255) + 1 unlabeled image each."""
    rng = np.random.default_rng(seed)
    for domain in ("siteA", "siteB"):
        for sub in ("images", "masks", "unlabeled"):
            (root / domain / sub).mkdir(parents=True)
        for i in range(5):
            mask = _blob((32, 32), rng)
            rgb = np.stack([40 + 150 * mask + rng.integers(0, 30, mask.shape)] * 3, -1)
            name = f"img{i}.png"
            if i == 4:
                Image.fromarray(rgb.astype(np.uint8)).save(root / domain / "unlabeled" / name)
                continue
            Image.fromarray(rgb.astype(np.uint8)).save(root / domain / "images" / name)
            Image.fromarray((mask * 255).astype(np.uint8)).save(root / domain / "masks" / name)
    return root


def nifti_config(root: Path, out: Path, **data) -> dict:
    return {
        "name": "nifti", "seed": 1, "output_dir": str(out),
        "data": {"layout": "nifti", "root": str(root), "num_classes": 2,
                 "class_names": {1: "blob"}, "labeled_count": 2, "val_count": 1,
                 "patch_size": [16, 16, 16], **data},
        "model": {"name": "vnet3d", "options": {"normalization": "batchnorm"}},
        "train": {"iterations": 2, "batch_size": 2, "val_every": 2, "threads": 2},
        "eval": {"unit": "mm", "overlay_cases": 1, "stride": [8, 8, 8]},
    }


def images_config(root: Path, out: Path, **data) -> dict:
    return {
        "name": "images", "seed": 1, "output_dir": str(out),
        "data": {"layout": "images", "root": str(root), "num_classes": 2, "in_channels": 3,
                 "class_names": {1: "lesion"}, "mask_values": {0: 0, 255: 1},
                 "labeled_count": 2, "val_count": 2, "test_count": 2,
                 "patch_size": [32, 32], **data},
        "model": {"name": "unet2d"},
        "train": {"iterations": 2, "batch_size": 2, "val_every": 2, "threads": 2},
        "eval": {"unit": "voxel", "overlay_cases": 1},
    }


def _write(tmp_path: Path, cfg: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "Traceback" not in err
    return err


def test_nifti_inspect_split_train_predict_evaluate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_nifti(tmp_path / "nifti")
    assert main(["data", "inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert "layout  nifti" in out and "1x1.25x3" in out and "problems: none" in out
    assert "unlabeled 3" in out and "domains A (6), B (5)" in out

    split_file = tmp_path / "splits.json"
    assert main(["data", "split", str(root), "--labeled", "2", "--val", "1", "--seed", "3",
                 "--out", str(split_file)]) == 0
    split = json.loads(split_file.read_text())
    assert split["test"] == ["test00", "test01"] and len(split["labeled"]) == 2
    assert {"case06", "case07", "extra00"} <= set(split["unlabeled"])

    cfg = _write(tmp_path, nifti_config(root, tmp_path / "runs"))
    run = tmp_path / "run"
    assert main(["train", str(cfg), f"data.split_file={split_file}", "--run-dir", str(run),
                 "--quiet"]) == 0
    assert json.loads((run / "splits.json").read_text()) == split
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["unit"] == "mm" and set(metrics["per_domain"]) <= {"A", "B"}
    assert "blob" in (run / "metrics.md").read_text()

    preds = tmp_path / "preds"
    src = root / "imagesTs" / "test00_0000.nii.gz"
    assert main(["predict", str(run), str(src), "--out", str(preds), "--quiet", "--tta"]) == 0
    written = nib.load(str(preds / "test00.nii.gz"))
    original = nib.load(str(src))
    assert written.shape == original.shape
    np.testing.assert_allclose(written.affine, original.affine)
    assert np.asarray(written.dataobj).dtype == np.uint8
    # refuses to overwrite without --overwrite, one line naming the file
    assert main(["predict", str(run / "checkpoints" / "last.safetensors"), str(src),
                 "--out", str(preds)]) == 2
    assert "test00.nii.gz: exists" in _error_line(capsys)
    assert main(["evaluate", str(run), "--split", "val"]) == 0
    assert (run / "metrics_val_best.json").is_file()


def test_nifti_2d_slices_and_prepared(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_nifti(tmp_path / "nifti")
    cfg = nifti_config(root, tmp_path / "runs", patch_size=[16, 16], slice_axis=2)
    cfg["model"] = {"name": "unet2d"}
    cfg["eval"].pop("stride")
    cfg["data"]["normalization"] = "zscore"
    run = tmp_path / "run2d"
    assert main(["train", str(_write(tmp_path, cfg)), "--run-dir", str(run), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_cases"] == 2 and metrics["unit"] == "mm"
    preds = tmp_path / "p2d"
    assert main(["predict", str(run), str(root / "imagesTs"), "--out", str(preds),
                 "--quiet"]) == 0
    assert nib.load(str(preds / "test01.nii.gz")).shape == (24, 20, 12)

    prepared = tmp_path / "prepared"
    assert main(["data", "prepare", str(_write(tmp_path, cfg)), "--out", str(prepared)]) == 0
    assert main(["data", "inspect", str(prepared)]) == 0
    capsys.readouterr()
    cfg["data"]["layout"] = "prepared"
    cfg["data"]["root"] = str(prepared)
    run_p = tmp_path / "run_prepared"
    assert main(["train", str(_write(tmp_path, cfg, "p.yaml")), "--run-dir", str(run_p),
                 "--quiet", "--no-eval"]) == 0
    assert json.loads((run_p / "splits.json").read_text()) == \
        json.loads((run / "splits.json").read_text())


def test_images_domains_train_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_images(tmp_path / "images")
    assert main(["data", "inspect", str(root), "--mask-values", "0:0,255:1"]) == 0
    out = capsys.readouterr().out
    assert "layout  images" in out and "siteA (5)" in out and "32x32 (3ch)" in out
    cfg = images_config(root, tmp_path / "runs", labeled_domain="siteA", val_count=1)
    run = tmp_path / "run"
    assert main(["train", str(_write(tmp_path, cfg)), "--run-dir", str(run), "--quiet"]) == 0
    split = json.loads((run / "splits.json").read_text())
    assert all(c.startswith("siteA/") for c in split["labeled"])
    assert "siteB/img4" in split["unlabeled"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["per_domain"] and all(c["domain"] for c in metrics["per_case"])
    preds = tmp_path / "png"
    assert main(["predict", str(run), str(root / "siteB" / "unlabeled"), "--out", str(preds),
                 "--overlay", "--quiet"]) == 0
    mask = np.asarray(Image.open(preds / "img4.png"))
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 1}
    assert np.asarray(Image.open(preds / "img4_overlay.png")).shape == (32, 32, 3)
    # never writes over an input
    inputs = root / "siteB" / "unlabeled"
    assert main(["predict", str(run), str(inputs / "img4.png"), "--out", str(inputs),
                 "--overwrite"]) == 2
    assert "would overwrite an input" in _error_line(capsys)


@pytest.mark.parametrize("breakage", ["truncated_nifti", "no_mask", "mask_size", "mask_value",
                                      "corrupt_png"])
def test_broken_inputs_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], breakage: str
) -> None:
    if breakage == "truncated_nifti":
        root = make_nifti(tmp_path / "data")
        target = root / "imagesTr" / "case00_0000.nii.gz"
        target.write_bytes(target.read_bytes()[:400])
        cfg = nifti_config(root, tmp_path / "runs", labeled_cases=["case00"],
                           labeled_count=None)
    else:
        root = make_images(tmp_path / "data")
        target = root / "siteA" / "masks" / "img1.png"
        if breakage == "no_mask":
            target.unlink()
            target = root / "siteA" / "images" / "img1.png"
        elif breakage == "mask_size":
            Image.fromarray(np.zeros((30, 32), np.uint8)).save(target)
        elif breakage == "mask_value":
            Image.fromarray(np.full((32, 32), 128, np.uint8)).save(target)
        else:
            target = root / "siteA" / "images" / "img1.png"
            target.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        cfg = images_config(root, tmp_path / "runs", labeled_count=None,
                            labeled_cases=["siteA/img1"])
    code = main(["train", str(_write(tmp_path, cfg)), "--quiet"])
    assert code == 2
    line = _error_line(capsys)
    assert target.name in line, line
    assert not (tmp_path / "runs").exists()
    # inspect reports it too (exit 1), with the file name
    extra = [] if breakage == "truncated_nifti" else ["--mask-values", "0:0,255:1"]
    assert main(["data", "inspect", str(root), *extra]) == 1
    assert target.name in capsys.readouterr().out
