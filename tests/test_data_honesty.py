"""No silent wrong results from the data floor (issue: every file the user meant is read or
refused, dataset.json as people write it, NaN/inf, one normalisation per run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from ssmis.config import validate_config
from ssmis.data.layouts import get_layout
from ssmis.data.layouts.images import scan_images
from ssmis.data.layouts.nifti import scan_nifti, write_nifti
from ssmis.data.normalisation import ChannelNorm
from ssmis.errors import SSMISError

pytestmark = pytest.mark.usefixtures("one_thread")


def _nifti_dataset(root: Path, n: int = 6, label_ending: str = ".nii.gz",
                   image_ending: str = ".nii.gz") -> None:
    from ssmis.data.phantoms import blob_volume

    for i in range(n):
        image, label = blob_volume(np.random.default_rng(i), (24, 24, 16))
        write_nifti(root / "imagesTr" / f"case{i:02d}_0000{image_ending}", image, (1, 1, 2))
        write_nifti(root / "labelsTr" / f"case{i:02d}{label_ending}", label, (1, 1, 2))


def _cfg(data: dict[str, Any], out: Path, method: str = "supervised") -> Any:
    dims = len(data["patch_size"])
    model = ({"name": "unet2d", "options": {"widths": [4, 4, 8, 8, 8]}} if dims == 2
             else {"name": "vnet3d", "options": {"n_filters": 2}})
    return validate_config({
        "name": "honesty", "seed": 3, "output_dir": str(out), "data": data, "model": model,
        "method": {"name": method},
        "train": {"iterations": 2, "batch_size": 2, "val_every": 2, "device": "cpu",
                  "threads": 1},
        "eval": {"unit": "voxel", "overlay_cases": 0,
                 **({"stride": [8] * 3} if dims == 3 else {})}})


# -- class 1: a file the user meant is never silently dropped ---------------------------------


def test_nii_labels_beside_niigz_images_are_labels(tmp_path: Path) -> None:
    _nifti_dataset(tmp_path, label_ending=".nii")
    write_nifti(tmp_path / "imagesTs" / "t0_0000.nii.gz", np.zeros((8, 8, 4), np.float32),
                (1, 1, 1))
    write_nifti(tmp_path / "labelsTs" / "t0.nii", np.zeros((8, 8, 4), np.uint8), (1, 1, 1))
    catalog = scan_nifti(tmp_path)
    assert all(c.label is not None for c in catalog.cases.values())
    assert catalog.ids("test", labeled=True) == ["t0"]


def test_a_label_in_an_unread_format_or_twice_is_a_problem_naming_it(tmp_path: Path) -> None:
    _nifti_dataset(tmp_path, n=3)
    (tmp_path / "labelsTr" / "case05.mha").write_bytes(b"x")
    write_nifti(tmp_path / "labelsTr" / "case01.nii", np.zeros((24, 24, 16), np.uint8),
                (1, 1, 2))
    problems: list[str] = []
    scan_nifti(tmp_path, problems)
    assert any("case05.mha" in p and "format" in p for p in problems), problems
    assert any("case01.nii" in p and "second label file" in p for p in problems), problems
    with pytest.raises(SSMISError, match="case0"):
        scan_nifti(tmp_path)


def test_entries_the_layout_does_not_read_are_named(tmp_path: Path, capsys) -> None:
    from ssmis.cli import main

    _nifti_dataset(tmp_path)
    (tmp_path / "imagesVal").mkdir()
    (tmp_path / "imagesTr" / "case00_0000.mha").write_bytes(b"x")
    (tmp_path / "imagesTr" / ".DS_Store").write_bytes(b"x")
    catalog = scan_nifti(tmp_path)
    reasons = dict(catalog.ignored)
    assert "not part of the nifti layout" in reasons[str(tmp_path / "imagesVal")]
    assert "not a NIfTI" in reasons[str(tmp_path / "imagesTr" / "case00_0000.mha")]
    assert reasons[str(tmp_path / "imagesTr" / ".DS_Store")] == "hidden file"
    main(["data", "inspect", str(tmp_path)])
    out = capsys.readouterr().out
    assert f"not read: {tmp_path / 'imagesVal'}" in out


def test_images_layout_names_unread_folders_and_files(tmp_path: Path) -> None:
    get_layout("images").write_example(tmp_path)
    (tmp_path / "site_a" / "images" / "scan.nii.gz").write_bytes(b"x")
    (tmp_path / "site_a" / "labels_v2").mkdir()
    catalog = scan_images(tmp_path)
    reasons = dict(catalog.ignored)
    assert "not a picture" in reasons[str(tmp_path / "site_a" / "images" / "scan.nii.gz")]
    assert "not one of the layout's folders" in reasons[str(tmp_path / "site_a" / "labels_v2")]


def test_a_wrong_mask_pattern_is_one_line_with_the_count(tmp_path: Path) -> None:
    from PIL import Image

    for i in range(12):
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / f"im{i}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / f"im{i}_seg.png")
    problems: list[str] = []
    scan_images(tmp_path, problems=problems)
    missing = [p for p in problems if "none of the 12 images" in p]
    assert len(missing) == 1 and "data.mask_pattern" in missing[0] and "im0_seg.png" in missing[0]
    assert "\n" not in missing[0]


# -- class 2: dataset.json as people write it --------------------------------------------------


@pytest.mark.parametrize("meta", [
    {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "blob"}},  # v1 / MSD
    {"channel_names": {"CT": "CT"}, "labels": {"background": 0, "blob": 1}},  # keyed by name
    {"channel_names": {"0": "ct"}, "labels": {"background": 0, "blob": [1]}},
])
def test_dataset_json_v1_and_v2_give_ct_windowing(tmp_path: Path, meta: dict) -> None:
    from ssmis.engine.data import resolve_normalisation

    _nifti_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    cfg = _cfg({"layout": "nifti", "root": str(tmp_path), "num_classes": 2,
                "labeled_count": 2, "val_count": 1, "test_count": 1,
                "intensity_window": [-200, 300], "patch_size": [16, 16, 16]}, tmp_path / "r")
    layout = get_layout("nifti")(cfg.data)
    cfg, lines = resolve_normalisation(cfg, layout)
    assert cfg.data.resolved_normalization[0]["scheme"] == "ct"
    assert cfg.data.resolved_normalization[0]["clip"] == [-200.0, 300.0]
    assert "clip to [-200, 300]" in lines[0]
    if "modality" in meta:
        assert layout.catalog.label_names == {0: "background", 1: "blob"}


@pytest.mark.parametrize("name,scheme", [("noNorm", "none"), ("rescale_to_0_1", "minmax"),
                                         ("T2", "zscore"), ("rgb_to_0_1", "scale")])
def test_nnunet_channel_names_map_to_its_schemes(name: str, scheme: str) -> None:
    from ssmis.data.normalisation import scheme_for_channel_name

    assert scheme_for_channel_name(name) == scheme


def test_dataset_json_that_ssmis_cannot_read_is_one_line(tmp_path: Path) -> None:
    _nifti_dataset(tmp_path, n=2)
    (tmp_path / "dataset.json").write_text(json.dumps({"file_ending": ".mha"}))
    with pytest.raises(SSMISError, match=r"dataset.json: file_ending '\.mha'"):
        scan_nifti(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": ["CT"]}))
    with pytest.raises(SSMISError, match="channel_names"):
        scan_nifti(tmp_path)


def test_dataset_json_label_count_against_num_classes(tmp_path: Path, capsys) -> None:
    from ssmis.cli import main

    _nifti_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2}}))
    config = {"name": "x", "output_dir": str(tmp_path / "runs"),
              "data": {"layout": "nifti", "root": str(tmp_path), "num_classes": 2,
                       "labeled_count": 2, "val_count": 1, "test_count": 1,
                       "patch_size": [16, 16, 16]},
              "model": {"name": "vnet3d"}, "train": {"iterations": 2, "batch_size": 2}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["data", "inspect", "--config", str(path)]) == 1
    assert "labels declare 3 classes" in capsys.readouterr().out
    assert main(["train", str(path)]) == 2
    assert "labels declare 3 classes" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_inspect_flags_configured_classes_that_never_occur(tmp_path: Path, capsys) -> None:
    from ssmis.cli import main

    _nifti_dataset(tmp_path)
    config = {"name": "x", "data": {"layout": "nifti", "root": str(tmp_path),
                                    "num_classes": 3, "labeled_count": 2, "val_count": 1,
                                    "test_count": 1, "patch_size": [16, 16, 16]},
              "model": {"name": "vnet3d"}, "train": {"iterations": 2, "batch_size": 2}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["data", "inspect", "--config", str(path)]) == 1
    assert "class(es) 2 (class2) occur in no label" in capsys.readouterr().out


def test_mask_snap_off_as_written_in_yaml() -> None:
    data = yaml.safe_load("mask_snap: off")
    assert data["mask_snap"] is False  # YAML 1.1
    cfg = validate_config({"data": {"layout": "images", "root": ".", "num_classes": 2,
                                    "labeled_count": 1, "val_count": 1, "patch_size": [32, 32],
                                    **data},
                           "train": {"iterations": 2, "batch_size": 2}})
    assert cfg.data.mask_snap == "off"


# -- class 3: NaN/inf --------------------------------------------------------------------------


def _float_tiff_dataset(root: Path) -> None:
    from PIL import Image

    from ssmis.data.phantoms import blob_volume

    for i in range(6):
        image, label = blob_volume(np.random.default_rng(i), (32, 32))
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.float32), mode="F").save(root / "images" / f"i{i}.tif")
        Image.fromarray((label * 255).astype(np.uint8)).save(root / "masks" / f"i{i}.png")


def test_train_refuses_a_nan_picture_before_writing(tmp_path: Path) -> None:
    from PIL import Image

    from ssmis.engine.run import train_run

    _float_tiff_dataset(tmp_path / "d")
    bad = np.asarray(Image.open(tmp_path / "d" / "images" / "i0.tif"), np.float32).copy()
    bad[:4, :4] = np.nan
    Image.fromarray(bad, mode="F").save(tmp_path / "d" / "images" / "i0.tif")
    cfg = _cfg({"layout": "images", "root": str(tmp_path / "d"), "num_classes": 2,
                "labeled_count": 4, "val_count": 1, "test_count": 1, "patch_size": [32, 32],
                "mask_values": {0: 0, 255: 1}}, tmp_path / "runs")
    with pytest.raises(SSMISError, match=r"i0\.tif: image contains 16 NaN"):
        train_run(cfg, run_dir=tmp_path / "runs" / "r", verbose=False)
    assert not (tmp_path / "runs").exists()


def test_predict_refuses_nan_input_unless_asked_to_fill(tmp_path: Path, capsys) -> None:
    from ssmis.engine.run import train_run
    from ssmis.predict import predict_files

    _float_tiff_dataset(tmp_path / "d")
    cfg = _cfg({"layout": "images", "root": str(tmp_path / "d"), "num_classes": 2,
                "labeled_count": 4, "val_count": 1, "test_count": 1, "patch_size": [32, 32],
                "mask_values": {0: 0, 255: 1}}, tmp_path / "runs")
    run = train_run(cfg, run_dir=tmp_path / "run", verbose=False)
    from PIL import Image

    bad = np.asarray(Image.open(tmp_path / "d" / "images" / "i0.tif"), np.float32).copy()
    bad[:4, :4] = np.nan
    Image.fromarray(bad, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(SSMISError, match=r"nan\.tif: 16 NaN and 0 inf values"):
        predict_files(run, [tmp_path / "nan.tif"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "nan.png").exists()
    written = predict_files(run, [tmp_path / "nan.tif"], tmp_path / "out", progress=False,
                            fill_nonfinite=True)
    assert written == [tmp_path / "out" / "nan.png"]
    assert "16 NaN/inf value(s) replaced" in capsys.readouterr().err


# -- class 4: one normalisation per run --------------------------------------------------------


def test_run_records_its_normalisation_and_predict_applies_it_to_any_container(
        tmp_path: Path) -> None:
    """A model trained on 8-bit PNGs gets the same input from the same pixels in a NIfTI
    file (x / 255, not a z-score), and a 16-bit file is refused in one line."""
    import nibabel as nib
    from PIL import Image

    from ssmis.config import read_yaml
    from ssmis.engine.run import train_run
    from ssmis.predict import Job, _load_job, run_normalisation

    data = get_layout("images").write_example(tmp_path / "d")
    cfg = _cfg(data, tmp_path / "runs")
    run = train_run(cfg, run_dir=tmp_path / "run", verbose=False)
    saved = read_yaml(run / "config.yaml")["data"]["resolved_normalization"]
    assert saved == [{"scheme": "scale", "divisor": 255.0, "file_dtype": "uint8",
                      "source": "data.normalization auto for picture files"}]
    run_cfg = validate_config(read_yaml(run / "config.yaml"))
    norms = run_normalisation(run_cfg, run)
    png = tmp_path / "d" / "site_a" / "images" / "img0.png"
    pixels = np.asarray(Image.open(png))
    nii = tmp_path / "img0.nii.gz"
    nib.save(nib.Nifti1Image(pixels.astype(np.float32), np.eye(4)), str(nii))
    from_png, _ = _load_job(Job("a", "image", [png]), run_cfg, norms)
    from_nii, _ = _load_job(Job("b", "nifti", [nii]), run_cfg, norms)
    np.testing.assert_allclose(from_nii, from_png, atol=1e-6)
    np.testing.assert_allclose(from_png[0], pixels / 255.0, atol=1e-6)
    # an integer file is divided by its own type's maximum, as training divides each file
    deep = tmp_path / "deep.nii.gz"
    nib.save(nib.Nifti1Image(pixels.astype(np.uint16) * 257, np.eye(4)), str(deep))
    from_deep, _ = _load_job(Job("c", "nifti", [deep]), run_cfg, norms)
    np.testing.assert_allclose(from_deep, from_png, atol=1e-6)
    # floating-point values beyond the training files' range cannot be put on their scale
    hot = tmp_path / "hot.nii.gz"
    nib.save(nib.Nifti1Image(pixels.astype(np.float32) * 16, np.eye(4)), str(hot))
    with pytest.raises(SSMISError, match=r"hot\.nii\.gz: values up to .* divided by 255"):
        _load_job(Job("d", "nifti", [hot]), run_cfg, norms)


def test_h5_layouts_record_the_preprocessing_of_their_files() -> None:
    acdc = get_layout("acdc_h5").stored_normalisation
    assert acdc is not None and acdc.scheme == "minmax" and acdc.stored
    x = np.array([[2.0, 4.0], [6.0, 10.0]], np.float32)
    np.testing.assert_allclose(acdc.apply(x), (x - 2) / 8)
    la = get_layout("la_h5").stored_normalisation
    assert la is not None and la.scheme == "zscore"
    np.testing.assert_allclose(la.apply(x), (x - x.mean()) / x.std(), atol=1e-6)
    pancreas = get_layout("pancreas_h5").stored_normalisation
    hu = np.array([-1000.0, 0.0, 100.0, 1000.0], np.float32)
    clipped = np.clip(hu, -125, 275)
    np.testing.assert_allclose(pancreas.apply(hu), (clipped - clipped.mean()) / clipped.std(),
                               atol=1e-6)


def test_channel_norm_round_trips_through_config_yaml() -> None:
    norm = ChannelNorm("ct", clip=(-125.0, 275.0), source="x")
    assert ChannelNorm.from_dict(yaml.safe_load(yaml.safe_dump(norm.as_dict()))) == norm
    with pytest.raises(SSMISError, match="data.resolved_normalization"):
        ChannelNorm.from_dict({"scheme": "magic"})


# -- found by a new user's walk after the first fixes -------------------------------------------


def test_a_ct_model_refuses_pictures_and_8bit_values(tmp_path: Path) -> None:
    """A CT-window record clips HU; display pixels (a PNG, uint8 values) are not HU."""
    norm = ChannelNorm("ct", clip=(-125.0, 275.0), source="x")
    with pytest.raises(SSMISError, match=r"a\.png: a picture file .* trained on CT"):
        norm.check_input("a.png", np.uint16, 4000.0, picture=True)
    with pytest.raises(SSMISError, match=r"b\.nii\.gz: 8-bit values"):
        norm.check_input("b.nii.gz", np.uint8, 255.0)
    norm.check_input("c.nii.gz", np.int16, 1200.0)  # HU in a NIfTI: fine


def test_a_share_of_a_very_short_run_keeps_one_pretraining_iteration() -> None:
    from ssmis.methods import build_method

    for method in ("bcp", "cvbm", "cml"):
        for params in ({}, {"pretrain_iterations": "20%"}):
            cfg = validate_config({
                "data": {"layout": "images", "root": ".", "num_classes": 2,
                         "labeled_count": 1, "val_count": 1, "patch_size": [32, 32]},
                "model": {"name": "unet2d", "options": {"widths": [4, 4, 8, 8, 8]}},
                "method": {"name": method, "params": params},
                "train": {"iterations": 2, "batch_size": 2, "unlabeled_batch_size": 2}})
            phases = build_method(cfg).phases()
            assert [p.iterations for p in phases] == [1, 1], (method, params)


def test_an_unquoted_pattern_override_is_a_string() -> None:
    from ssmis.config import parse_override

    assert parse_override("data.mask_pattern={id}_seg") == (["data", "mask_pattern"], "{id}_seg")
    with pytest.raises(SSMISError, match="not valid YAML") as err:
        parse_override("data.patch_size=[32, {]")
    assert "\n" not in str(err.value)


def test_a_wrong_explicit_mask_pattern_is_one_line(tmp_path: Path) -> None:
    from PIL import Image

    for i in range(7):
        for folder, name in (("images", f"im{i}.png"), ("masks", f"im{i}_seg.png")):
            (tmp_path / folder).mkdir(exist_ok=True)
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / folder / name)
    problems: list[str] = []
    scan_images(tmp_path, problems=problems, mask_pattern="{id}_mask")
    assert len(problems) == 2, problems  # masks not matching, images without a mask
    assert problems[0].startswith(f"{tmp_path / 'masks'}: 7 files: name does not match "
                                  "data.mask_pattern '{id}_mask'")


# -- found by review: older folders and mixed files --------------------------------------------


def test_scale_without_a_recorded_divisor_divides_by_the_file_type() -> None:
    """A prepared cache of an older ssmis records 'scale' without numbers: an 8-bit input is
    divided by 255 as that version's predict did, not left at 0..255."""
    from ssmis.data.prepared_format import prepared_normalisation

    (norm,) = prepared_normalisation({"normalization": ["scale"]}, Path("."))
    np.testing.assert_allclose(norm.apply(np.array([200], np.uint8)), [200 / 255], rtol=1e-6)
    np.testing.assert_allclose(norm.apply(np.array([0.5], np.float32)), [0.5])


def test_mixed_bit_depths_are_recorded_and_read_as_training_reads_them(tmp_path: Path) -> None:
    from PIL import Image

    from ssmis.data.layouts import get_layout

    data = get_layout("images").write_example(tmp_path / "d")
    deep = np.asarray(Image.open(tmp_path / "d" / "site_a" / "images" / "img0.png"),
                      np.uint16) * 257
    Image.fromarray(deep).save(tmp_path / "d" / "site_a" / "images" / "img0.png")
    cfg = _cfg(data, tmp_path / "runs")
    (norm,) = get_layout("images")(cfg.data).normalisation()
    assert (norm.scheme, norm.divisor, norm.file_dtype) == ("scale", None, "uint16, uint8")
    np.testing.assert_allclose(norm.apply(np.array([51400], np.uint16)), [51400 / 65535])
    np.testing.assert_allclose(norm.apply(np.array([200], np.uint8)), [200 / 255], rtol=1e-6)
    with pytest.raises(SSMISError, match=r"x\.nii: floating-point values, but the model was "
                                         r"trained on uint16, uint8 files"):
        norm.check_input("x.nii", np.float32, 200.0)


def test_a_run_without_a_record_is_read_with_the_rule_it_trained_with(tmp_path: Path) -> None:
    """ssmis before the record read no v1 'modality': such a run trained with zscore, and
    evaluate/resume/predict keep zscore instead of switching to today's CT window."""
    from ssmis.engine.data import build_layout, pin_run_normalisation

    _nifti_dataset(tmp_path / "d")
    (tmp_path / "d" / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}}))
    cfg = _cfg({"layout": "nifti", "root": str(tmp_path / "d"), "num_classes": 2,
                "labeled_count": 2, "val_count": 1, "test_count": 1,
                "patch_size": [16, 16, 16]}, tmp_path / "r")
    layout = build_layout(cfg)
    assert [n.scheme for n in layout.normalisation()] == ["ct"]
    pinned, layout, lines = pin_run_normalisation(cfg, layout)
    assert pinned.data.normalization == ["zscore"] and "kept ['zscore']" in lines[0]
    assert [n.scheme for n in layout.normalisation()] == ["zscore"]
    (tmp_path / "d" / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}}))
    same, _, lines = pin_run_normalisation(cfg, build_layout(cfg))
    assert same.data.normalization == "auto" and lines == []


def test_an_explicit_zero_pretraining_share_stays_zero() -> None:
    from ssmis.methods import build_method

    cfg = validate_config({
        "data": {"layout": "images", "root": ".", "num_classes": 2, "labeled_count": 1,
                 "val_count": 1, "patch_size": [32, 32]},
        "model": {"name": "unet2d", "options": {"widths": [4, 4, 8, 8, 8]}},
        "method": {"name": "bcp", "params": {"pretrain_iterations": "0%"}},
        "train": {"iterations": 2, "batch_size": 2, "unlabeled_batch_size": 2}})
    assert [p.iterations for p in build_method(cfg).phases()] == [2]


def test_predict_of_an_older_run_whose_data_are_gone(tmp_path: Path, capsys) -> None:
    from ssmis.predict import run_normalisation

    images = _cfg({"layout": "images", "root": str(tmp_path / "gone"), "num_classes": 2,
                   "labeled_count": 1, "val_count": 1, "patch_size": [32, 32]}, tmp_path)
    (norm,) = run_normalisation(images, tmp_path)
    assert norm.scheme == "scale" and "not recorded" in capsys.readouterr().err
    nifti = _cfg({"layout": "nifti", "root": str(tmp_path / "gone"), "num_classes": 2,
                  "labeled_count": 1, "val_count": 1, "patch_size": [16, 16, 16]}, tmp_path)
    with pytest.raises(SSMISError, match="point data.root to the training data, or add "
                                         "data.resolved_normalization"):
        run_normalisation(nifti, tmp_path)


def test_inspect_takes_nnunet_region_labels(tmp_path: Path, capsys) -> None:
    """A region entry ({"blob": [1]}) declares value 1: inspect does not call it unexpected."""
    from ssmis.cli import main

    _nifti_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "blob": [1]}}))
    assert main(["data", "inspect", str(tmp_path)]) == 0
    assert "problems: none" in capsys.readouterr().out
