"""Own data the way users have it (issue 15, items 1-4): palette PNG/GIF masks, lossy JPEG masks
and value ranges, 16-bit images, DRIVE naming (TIF images, GIF masks, FOV masks, different
stems, training/ and test/ folders), ROI-restricted scoring, and `data inspect --config`.

Every dataset here is a small synthetic copy written in that format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ssmis.cli import main
from ssmis.config import DataConfig, validate_config
from ssmis.data.layouts import scan_catalog
from ssmis.data.layouts.images import scan_images
from ssmis.data.layouts.prepared import prepare_dataset
from ssmis.data.masks import lookup_classes, normalize_mask_values
from ssmis.data.pictures import map_mask, read_picture
from ssmis.data.reader import CaseReader
from ssmis.errors import SSMISError

SIZE = (40, 48)  # H, W


def _disk(radius: float, size: tuple[int, int] = SIZE, shift: float = 0.0) -> np.ndarray:
    yy, xx = np.indices(size)
    return ((yy - size[0] / 2 - shift) ** 2 + (xx - size[1] / 2) ** 2) < radius ** 2


def _palette(index: np.ndarray) -> Image.Image:
    """An indexed (mode P) image whose palette is colourful: grey conversion gives 0/76/150."""
    img = Image.fromarray(index.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0, 0, 0] * 253)
    return img


def _rgb(mask: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grey = 40 + 150 * mask + rng.integers(0, 30, mask.shape)
    return np.stack([grey] * 3, -1).astype(np.uint8)


def _cfg(root: Path, **data) -> DataConfig:
    fields = {"layout": "images", "root": str(root), "num_classes": 3, "in_channels": 3,
              "labeled_count": 1, "val_count": 1, "patch_size": [32, 32], **data}
    return DataConfig(**fields)


def _labels(root: Path, **data) -> dict[str, np.ndarray]:
    cfg = _cfg(root, **data)
    reader = CaseReader(scan_catalog("images", root, cfg), cfg)
    return {case: reader.load(case, with_label=True).label for case in reader.catalog.cases}


# --------------------------------------------------------------------------- item 1: masks


def _palette_dataset(root: Path, ext: str) -> dict[str, np.ndarray]:
    """3 RGB images with indexed masks (0 background, 1 disc, 2 cup) saved as ``ext``."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    truth = {}
    for i in range(3):
        index = _disk(14, shift=i).astype(np.uint8) + _disk(6, shift=i)
        Image.fromarray(_rgb(index > 0, i)).save(root / "images" / f"eye{i}.png")
        _palette(index).save(root / "masks" / f"eye{i}{ext}")
        truth[f"eye{i}"] = index
    return truth


@pytest.mark.parametrize("ext", [".png", ".gif", ".tif"])
def test_palette_masks_read_as_indices_and_gif_masks_found(tmp_path: Path, ext: str) -> None:
    truth = _palette_dataset(tmp_path, ext)
    assert np.asarray(Image.open(tmp_path / "masks" / f"eye0{ext}").convert("L")).max() == 150
    labels = _labels(tmp_path)
    assert set(labels) == set(truth)
    for case, index in truth.items():
        np.testing.assert_array_equal(labels[case], index)


def test_palette_masks_with_grey_mask_values_say_why_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Copying grey-level mask_values onto palette masks: a hint that the values are palette
    indices, and one line for the repeats instead of one per file."""
    _palette_dataset(tmp_path, ".png")
    with pytest.raises(SSMISError, match=r"eye0\.png: mask value\(s\) \[1, 2\] .* a palette "
                                         r"\(indexed\) image"):
        _labels(tmp_path, num_classes=3, mask_values={0: 0, 128: 1, 255: 2})
    assert main(["data", "inspect", str(tmp_path), "--mask-values", "0:0,128:1,255:2"]) == 1
    out = capsys.readouterr().out
    assert out.count("palette (indexed) image") == 3  # two files, then the count line
    assert "... and 1 more file(s) with the same problem" in out


def _jpeg_dataset(root: Path, n: int = 2) -> dict[str, np.ndarray]:
    """Two hospitals, JPEG images and JPEG (lossy) 0/255 masks."""
    truth = {}
    for h in ("hospA", "hospB"):
        (root / h / "images").mkdir(parents=True)
        (root / h / "masks").mkdir()
        for i in range(n):
            mask = _disk(12, shift=i - 3)
            Image.fromarray(_rgb(mask, i)).save(root / h / "images" / f"f{i}.jpg", quality=80)
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / h / "masks" / f"f{i}.jpg",
                                                              quality=75)
            truth[f"{h}/f{i}"] = mask
    return truth


def test_jpeg_masks_snapped_to_declared_values(tmp_path: Path) -> None:
    truth = _jpeg_dataset(tmp_path)
    stored = np.asarray(Image.open(tmp_path / "hospA" / "masks" / "f0.jpg"))
    assert len(np.unique(stored)) > 10  # the compression really added values
    labels = _labels(tmp_path, num_classes=2, mask_values={0: 0, 255: 1})
    for case, mask in truth.items():
        assert set(np.unique(labels[case])) == {0, 1}
        assert (labels[case] == mask).mean() > 0.99
    # no declared values: one line naming the file, saying why and what to declare
    with pytest.raises(SSMISError, match=r"f0\.jpg: label has values .* a JPEG mask is lossy: "
                                         r"declare its values with data.mask_values"):
        _labels(tmp_path, num_classes=2)
    # snapping off: one line naming the mask file and both ways out
    with pytest.raises(SSMISError, match=r"f0\.jpg: mask value\(s\) \[.*mask_snap: nearest"):
        _labels(tmp_path, num_classes=2, mask_values={0: 0, 255: 1}, mask_snap="off")


def test_inspect_reports_snapped_jpeg_masks_and_asks_for_values(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _jpeg_dataset(tmp_path)
    assert main(["data", "inspect", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "lossy mask(s) (.jpg)" in out and "--mask-values 0:0,255:1" in out
    assert f"{tmp_path / 'hospA' / 'masks'}, {tmp_path / 'hospB' / 'masks'}: 4 lossy" in out
    assert main(["data", "inspect", str(tmp_path), "--mask-values", "0:0,255:1"]) == 0
    out = capsys.readouterr().out
    assert "snapped to the nearest of 0:0,255:1" in out and "in 4 mask(s)" in out
    assert "problems: none" in out


def test_mask_value_ranges(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = _jpeg_dataset(tmp_path)
    # the threshold form: CLI string, config string and config dict are one mapping
    assert main(["data", "inspect", str(tmp_path), "--mask-values", "0-127:0,128-255:1",
                 "--num-classes", "2"]) == 0
    out = capsys.readouterr().out
    assert "problems: none" in out and "snapped" not in out
    for given in ("0-127:0,128-255:1", {"0-127": 0, "128-255": 1}):
        labels = _labels(tmp_path, num_classes=2, mask_values=given, mask_snap="off")
        for case, mask in truth.items():
            raw = np.asarray(Image.open(tmp_path / f"{case.replace('/', '/masks/')}.jpg"))
            np.testing.assert_array_equal(labels[case], (raw >= 128).astype(np.int64))
            assert (labels[case] == mask).mean() > 0.99
    assert normalize_mask_values({0: 0, 255: 1}) == {0: 0, 255: 1}  # the dict form still works
    assert normalize_mask_values("0:0, 100-200:1,255:2") == {0: 0, "100-200": 1, 255: 2}
    with pytest.raises(ValueError, match="'0-127' and '100-255' overlap"):
        normalize_mask_values("0-127:0,100-255:1")
    assert main(["data", "inspect", str(tmp_path), "--mask-values", "0-x:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--mask-values: key '0-x'" in err


def test_lookup_nearest_and_ranges() -> None:
    mapping = normalize_mask_values({0: 0, 128: 1, "250-255": 2})
    classes, snapped = lookup_classes(np.array([0, 3, 64, 65, 128, 200, 252]), mapping, True)
    assert classes.tolist() == [0, 0, 0, 1, 1, 2, 2]  # 64: tie between 0 and 128 -> the lower
    assert snapped.tolist() == [False, True, True, True, False, True, False]
    classes, _ = lookup_classes(np.array([0, 3, 252]), mapping, False)
    assert classes.tolist() == [0, -1, 2]
    out = map_mask(Path("m.png"), np.array([[0, 3], [129, 255]], np.uint8), mapping, 3,
                   snap=True)
    assert out.tolist() == [[0, 0], [1, 2]]


# --------------------------------------------------------------------------- item 2: dtypes


@pytest.mark.parametrize("channels", [3, 1])
def test_16bit_png_keeps_its_range(tmp_path: Path, channels: int,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    mask = _disk(12)
    raw = (8000 + 40000 * mask + rng.integers(0, 2000, SIZE)).astype(np.uint16)
    for name in ("a", "b"):
        Image.fromarray(raw).save(tmp_path / "images" / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "masks" / f"{name}.png")
    assert read_picture(tmp_path / "images" / "a.png", "RGB").max() == raw.max()
    cfg = _cfg(tmp_path, num_classes=2, in_channels=channels)
    arrays = CaseReader(scan_catalog("images", tmp_path, cfg), cfg).load("a", with_label=True)
    assert arrays.image.shape == (channels, *SIZE)
    for c in range(channels):  # scale: divided by the dtype's maximum, 65535, not clipped at 255
        np.testing.assert_allclose(arrays.image[c], raw / 65535.0, rtol=1e-6)
    assert arrays.source_dtype == "uint16"
    assert arrays.source_range == (float(raw.min()), float(raw.max()))
    assert main(["data", "inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "uint16" in out and f"{raw.max()}" in out
    # one 8-bit file among 16-bit ones: scale would put them on different intensity scales
    Image.fromarray((raw // 256).astype(np.uint8)).save(tmp_path / "images" / "c.png")
    Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "masks" / "c.png")
    assert main(["data", "inspect", str(tmp_path)]) == 1
    assert "images mix uint16 and uint8 files" in capsys.readouterr().out


# --------------------------------------------------------------------------- item 3: DRIVE


def make_drive(root: Path, train: tuple[str, ...] = ("21", "22", "23", "24"),
               test: tuple[str, ...] = ("01", "02")) -> dict[str, np.ndarray]:
    """DRIVE as downloaded: training/ and test/ with images/<id>_<subset>.tif (RGB),
    1st_manual/<id>_manual1.gif (vessels 0/255) and mask/<id>_<subset>_mask.gif (FOV)."""
    truth = {}
    for subset, ids in (("training", train), ("test", test)):
        for sub in ("images", "1st_manual", "mask"):
            (root / subset / sub).mkdir(parents=True)
        for k, case in enumerate(ids):
            fov = _disk(18)
            vessels = np.zeros(SIZE, bool)
            vessels[:, 10 + 2 * k: 13 + 2 * k] = True  # a vertical vessel, also outside the FOV
            vessels[20, :] = True
            Image.fromarray(_rgb(vessels, k)).save(root / subset / "images"
                                                   / f"{case}_{subset}.tif")
            Image.fromarray(vessels.astype(np.uint8) * 255).save(
                root / subset / "1st_manual" / f"{case}_manual1.gif")
            Image.fromarray(fov.astype(np.uint8) * 255).save(
                root / subset / "mask" / f"{case}_{subset}_mask.gif")
            truth[case if subset == "training" else f"test/{case}"] = vessels
    return truth


DRIVE_DATA = {"layout": "images", "num_classes": 2, "in_channels": 3,
              "class_names": {1: "vessel"}, "mask_values": {0: 0, 255: 1},
              "images_dir": "images", "masks_dir": "1st_manual", "roi_dir": "mask",
              "image_pattern": "{id}_*", "mask_pattern": "{id}_manual1",
              "roi_pattern": "{id}_*_mask", "labeled_count": 2, "val_count": 1,
              "patch_size": [32, 32]}


def test_drive_naming_pairs_tif_gif_and_fov(tmp_path: Path) -> None:
    truth = make_drive(tmp_path / "DRIVE")
    cfg = DataConfig(root=str(tmp_path / "DRIVE"), **DRIVE_DATA)
    catalog = scan_catalog("images", cfg.root, cfg)
    assert {c: (i.subset, i.domain) for c, i in catalog.cases.items()} == {
        "21": ("train", None), "22": ("train", None), "23": ("train", None),
        "24": ("train", None), "test/01": ("test", None), "test/02": ("test", None)}
    assert catalog.cases["21"].label.name == "21_manual1.gif"
    assert catalog.cases["test/02"].roi.name == "02_test_mask.gif"
    reader = CaseReader(catalog, cfg)
    arrays = reader.load("test/01", with_label=True)
    np.testing.assert_array_equal(arrays.label, truth["test/01"])
    np.testing.assert_array_equal(arrays.roi, _disk(18))
    assert arrays.image.shape == (3, *SIZE)
    # a prepared copy keeps the ROI
    prepared = prepare_dataset(catalog, cfg, tmp_path / "prepared", progress=False)
    again = CaseReader(scan_catalog("prepared", prepared), cfg).load("test/01", with_label=True)
    np.testing.assert_array_equal(again.roi, _disk(18))
    np.testing.assert_array_equal(again.label, truth["test/01"])


def test_pairing_problems_name_the_file(tmp_path: Path) -> None:
    root = tmp_path / "DRIVE"
    make_drive(root)
    (root / "training" / "mask" / "22_training_mask.gif").unlink()
    (root / "training" / "1st_manual" / "23_manual1.gif").rename(
        root / "training" / "1st_manual" / "23_manual.gif")
    kw = {k: DRIVE_DATA[k] for k in ("masks_dir", "roi_dir", "image_pattern", "mask_pattern",
                                     "roi_pattern")}
    problems: list[str] = []
    catalog = scan_images(root, problems=problems, **kw)
    assert set(catalog.cases) == {"21", "24", "test/01", "test/02"}
    assert any("22_training.tif: no ROI mask" in p and "mask/22_*_mask.*" in p
               for p in problems)
    assert any("23_manual.gif: name does not match data.mask_pattern '{id}_manual1'" in p
               for p in problems)
    assert any("23_training.tif: no mask" in p and "23_manual1.*" in p for p in problems)
    with pytest.raises(SSMISError, match="data.mask_pattern: 'manual' must contain '{id}'"):
        scan_images(root, mask_pattern="manual")


def test_roi_restricts_scoring(tmp_path: Path) -> None:
    """A model that predicts 'vessel' everywhere: Dice inside the FOV only, where |pred| is
    the FOV's pixel count rather than the whole image's."""
    import torch

    from ssmis.data.datasets import EvalCase
    from ssmis.engine.evaluate import evaluate_split, validation_cases

    class Everywhere(torch.nn.Module):
        def predict(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(x.shape[0], 2, *x.shape[2:])
            logits[:, 1] = 1.0
            return logits

    cfg = validate_config({"data": {**DRIVE_DATA, "root": str(tmp_path)},
                           "model": {"name": "unet2d"},
                           "train": {"iterations": 1, "batch_size": 1, "device": "cpu"},
                           "eval": {"unit": "voxel"}})
    label = np.zeros(SIZE, np.int64)
    label[:, 22:26] = 1
    fov = _disk(12)
    image = np.zeros((3, *SIZE), np.float32)
    hit = (label.astype(bool) & fov).sum()
    inside, whole = 2 * hit / (hit + fov.sum()), 2 * label.sum() / (label.sum() + label.size)
    assert inside > whole + 0.1
    cases = [EvalCase("a", image, label, None, roi=fov)]
    (dice, *_), = validation_cases(Everywhere(), iter(cases), cfg, torch.device("cpu"))
    assert dice == pytest.approx([inside])
    result, _ = evaluate_split(Everywhere(), iter(cases), cfg, torch.device("cpu"),
                               split="test", checkpoint="x", iteration=None)
    assert result["per_case"][0]["metrics"]["1"]["dice"] == pytest.approx(inside)
    assert result["per_case"][0]["within_roi"] and "ROI" in result["roi"]
    from ssmis.eval.report import _footer

    assert "scored inside each case's ROI / field of view (1 of 1 cases)" in _footer(result)
    no_roi = [EvalCase("a", image, label, None)]
    result, _ = evaluate_split(Everywhere(), iter(no_roi), cfg, torch.device("cpu"),
                               split="test", checkpoint="x", iteration=None)
    assert result["per_case"][0]["metrics"]["1"]["dice"] == pytest.approx(whole)
    assert "ROI" not in _footer(result)


# --------------------------------------------------------------------------- item 4: inspect


def test_inspect_with_config_checks_its_keys(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "DRIVE"
    make_drive(root)
    cfg = {"name": "drive", "output_dir": str(tmp_path / "runs"),
           "data": {**DRIVE_DATA, "root": str(root)}, "model": {"name": "unet2d"},
           "train": {"iterations": 2, "batch_size": 1}}
    path = tmp_path / "drive.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["data", "inspect", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "domains" not in out  # training/ and test/ are subsets
    assert "cases   6: test 2, train 4" in out
    assert "split   labeled 2, unlabeled 1, val 1, test 2" in out
    assert "inside the ROI" in out and " roi " in out
    # the split the config draws is checked too
    assert main(["data", "inspect", str(path), "data.labeled_count=9"]) == 1
    assert "data.labeled_count: 9 cases requested, only 3 available" in capsys.readouterr().out
    # the positional YAML with an override, and a key that points nowhere
    assert main(["data", "inspect", str(path), "data.roi_dir=fov"]) == 1
    out = capsys.readouterr().out
    assert "data.roi_dir: no folder 'fov'" in out
    cfg["data"].update(images_dir="images", test_images_dir="extra/images",
                       test_masks_dir="extra/1st_manual", test_roi_dir="extra/mask")
    path.write_text(yaml.safe_dump(cfg))
    assert main(["data", "inspect", "--config", str(path)]) == 1
    assert "data.test_images_dir: no folder 'extra/images'" in capsys.readouterr().out


def test_inspect_training_and_test_folders_are_not_domains(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for subset in ("training", "test"):
        (tmp_path / subset / "images").mkdir(parents=True)
        (tmp_path / subset / "masks").mkdir()
        for i in range(2):
            mask = _disk(10, shift=i)
            Image.fromarray(_rgb(mask, i)).save(tmp_path / subset / "images" / f"{i}.png")
            Image.fromarray(mask.astype(np.uint8)).save(tmp_path / subset / "masks" / f"{i}.png")
    assert main(["data", "inspect", str(tmp_path), "--num-classes", "2"]) == 0
    out = capsys.readouterr().out
    assert "domains" not in out and "cases   4: test 2, train 2" in out
    assert "test/1" in out
    # training images directly under the root, test/ beside them
    for sub in ("images", "masks"):
        (tmp_path / "training" / sub).rename(tmp_path / sub)
    catalog = scan_images(tmp_path)
    assert {c: i.subset for c, i in catalog.cases.items()} == {
        "0": "train", "1": "train", "test/0": "test", "test/1": "test"}
    # a shipped validation folder joins the training pool (the split draws validation cases)
    (tmp_path / "validation").mkdir()
    (tmp_path / "test").rename(tmp_path / "validation" / "x")
    for sub in ("images", "masks"):
        (tmp_path / "validation" / "x" / sub).rename(tmp_path / "validation" / sub)
    catalog = scan_images(tmp_path)
    assert {c: (i.subset, i.domain) for c, i in catalog.cases.items()} == {
        "0": ("train", None), "1": ("train", None), "val/0": ("train", None),
        "val/1": ("train", None)}


def test_drive_trains_and_scores_inside_the_fov(tmp_path: Path) -> None:
    """DRIVE as downloaded, a config and nothing else: train, then test metrics inside the FOV."""
    import json

    root = tmp_path / "DRIVE"
    make_drive(root)
    cfg = {"name": "drive", "seed": 1, "output_dir": str(tmp_path / "runs"),
           "data": {**DRIVE_DATA, "root": str(root)},
           "model": {"name": "unet2d", "options": {"widths": [4, 4, 8, 8, 8]}},
           "train": {"iterations": 2, "batch_size": 1, "val_every": 2, "threads": 1},
           "eval": {"unit": "voxel", "overlay_cases": 1}}
    path = tmp_path / "drive.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", str(path), "--run-dir", str(run), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert [c["case"] for c in metrics["per_case"]] == ["test/01", "test/02"]
    assert all(c["within_roi"] for c in metrics["per_case"]) and "ROI" in metrics["roi"]


def test_16bit_colour_png_keeps_its_values(tmp_path: Path) -> None:
    """48-bit RGB PNG/TIFF: Pillow alone gives value >> 8; read at 16 bits (SimpleITK)."""
    sitk = pytest.importorskip("SimpleITK")
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 65536, (*SIZE, 3)).astype(np.uint16)
    for ext in (".png", ".tif"):
        path = tmp_path / f"colour{ext}"
        sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))
        assert np.asarray(Image.open(path)).dtype == np.uint8  # what Pillow alone gives
        np.testing.assert_array_equal(read_picture(path, "RGB"), rgb)
        grey = read_picture(path, "L")
        assert grey.dtype == np.uint16
        np.testing.assert_allclose(grey, rgb @ np.array([0.299, 0.587, 0.114]), atol=0.5)
