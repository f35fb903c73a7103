"""Every registered data layout meets the one interface the engine asks (``ssmis.data.layouts``)
on the tiny synthetic copy it writes in its exact on-disk format: detection, listing, split,
file checks, training items, evaluation cases, a bad id named in one line, and two training
iterations end to end. A new layout is covered by registering it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ssmis.config import validate_config
from ssmis.data.layouts import LAYOUTS, detect_layout, get_layout
from ssmis.data.splits import Split
from ssmis.errors import SSMISError

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(data: dict[str, Any], out: Path) -> Any:
    dims = len(data["patch_size"])
    model = ({"name": "unet2d", "options": {"widths": [4, 4, 8, 8, 8]}} if dims == 2
             else {"name": "vnet3d", "options": {"n_filters": 2}})
    return validate_config({
        "name": "contract", "seed": 3, "output_dir": str(out), "data": data, "model": model,
        "method": {"name": "supervised"},
        "train": {"iterations": 2, "batch_size": 2, "val_every": 2, "device": "cpu",
                  "threads": 1},
        "eval": {"unit": "voxel", "overlay_cases": 1,
                 **({"stride": [8] * 3} if dims == 3 else {})}})


@pytest.fixture(params=sorted(LAYOUTS))
def example(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Any]:
    name = request.param
    data = get_layout(name).write_example(tmp_path / name)
    return name, _config(data, tmp_path / "runs")


def test_layout_lists_splits_and_reads_its_example(example: tuple[str, Any]) -> None:
    from ssmis.engine.data import _train_transform

    name, cfg = example
    d = cfg.data
    assert detect_layout(d.root) == name
    layout = get_layout(name)(d)
    cases = layout.cases()
    ids = [c.case for c in cases]
    assert len(ids) == len(set(ids)) > 0
    split = layout.split()
    for part in ("labeled", "unlabeled", "val", "test"):
        assert getattr(split, part), part
    split.check_disjoint()
    entry = {c.case: c for c in cases}
    for case in split.labeled + split.val + split.test:
        assert entry[case].labeled, case
    layout.check_files(split, need_unlabeled=True)

    transform = _train_transform(cfg)
    labeled = layout.train_dataset(split.labeled, transform, with_label=True)
    item = labeled[(0, 11)]
    assert tuple(item["image"].shape) == (d.in_channels, *d.patch_size)
    assert item["image"].dtype.is_floating_point
    assert tuple(item["label"].shape) == tuple(d.patch_size)
    assert int(item["label"].min()) >= 0 and int(item["label"].max()) < d.num_classes
    again = labeled[(0, 11)]  # the augmentation is a function of the sample seed
    assert bool((again["image"] == item["image"]).all())
    unlabeled = layout.train_dataset(split.unlabeled, transform, with_label=False)
    assert "label" not in unlabeled[(0, 1)]

    case = next(iter(layout.eval_cases(split.val[:1])))
    assert case.case == split.val[0]
    spatial = case.image.shape[-case.label.ndim:]
    assert spatial == case.label.shape and case.label.ndim in (2, 3)
    assert np.isfinite(case.image).all()
    assert case.spacing is None or len(case.spacing) == case.label.ndim


def test_unknown_case_is_one_line_naming_it(example: tuple[str, Any]) -> None:
    name, cfg = example
    layout = get_layout(name)(cfg.data)
    split = layout.split()
    bad = Split(labeled=["no_such_case"], unlabeled=split.unlabeled, val=split.val,
                test=split.test)
    with pytest.raises(SSMISError) as err:
        layout.check_split(bad, "splits.json")
        layout.check_files(bad, need_unlabeled=False)
    message = str(err.value)
    assert "no_such_case" in message and "\n" not in message


def test_layout_trains_end_to_end(example: tuple[str, Any], tmp_path: Path) -> None:
    from ssmis.engine.run import train_run

    name, cfg = example
    run = train_run(cfg, run_dir=tmp_path / f"run_{name}", verbose=False)
    metrics = json.loads((run / "metrics.json").read_text())
    split = json.loads((run / "splits.json").read_text())
    assert metrics["split"] == "test"
    assert sorted(r["case"] for r in metrics["per_case"]) == sorted(split["test"])


def test_unknown_layout_is_one_line_listing_the_registered_ones(tmp_path: Path) -> None:
    with pytest.raises(SSMISError) as err:
        _config({"layout": "acdc", "root": str(tmp_path), "num_classes": 2,
                 "patch_size": [32, 32]}, tmp_path)
    message = str(err.value)
    assert "unknown layout 'acdc'" in message and "acdc_h5" in message and "\n" not in message


def test_data_layouts_lists_every_registered_layout(capsys: pytest.CaptureFixture[str]) -> None:
    from ssmis.cli import main

    assert main(["data", "layouts"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(LAYOUTS)
    assert any(line.split()[:2] == ["acdc_h5", "2D"] for line in lines)


def test_inspect_reads_every_case_of_the_example(example: tuple[str, Any],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`ssmis data inspect` detects the layout and reads each listed case, with no problem."""
    from ssmis.cli import main

    name, cfg = example
    count = len(get_layout(name)(cfg.data).cases())
    assert main(["data", "inspect", str(cfg.data.root)]) == 0
    out = capsys.readouterr().out
    assert f"layout  {name}" in out and f"cases   {count}:" in out and "problems: none" in out


def test_device_batches_equal_the_loader_batches(example: tuple[str, Any]) -> None:
    """``data.on_device``: every 2D layout whose augmentation has the batched form gives, from
    the slices held on the device, the DataLoader's batches pixel for pixel (labeled and
    unlabeled streams, a resumed stream too), and leaves torch's generator where the loader
    leaves it."""
    import torch

    from ssmis.config import device_augmentable
    from ssmis.data.device_aug import DeviceBatchStream
    from ssmis.engine.data import train_batches

    name, cfg = example
    if not device_augmentable(cfg.data):
        pytest.skip(f"{name}: no batched device augmentation (3D or data.resize: false)")
    layout = get_layout(name)(cfg.data)
    split = layout.split()
    cpu = torch.device("cpu")
    for start in (0, 5):
        cfg.data.on_device = False
        torch.manual_seed(0)
        loader = train_batches(cfg, split, 2, start, layout=layout, device=cpu)
        after_loader = torch.rand(3)
        cfg.data.on_device = True
        torch.manual_seed(0)
        routes: list[str] = []
        stream = train_batches(cfg, split, 2, start, layout=layout, device=cpu,
                               log=routes.append)
        assert isinstance(stream, DeviceBatchStream) and "held and augmented" in routes[0]
        assert torch.equal(torch.rand(3), after_loader)
        for _ in range(3):
            (lab_a, unl_a), (lab_b, unl_b) = next(loader), next(stream)
            assert lab_a["case"] == lab_b["case"] and unl_a["case"] == unl_b["case"]
            assert lab_b["image"].dtype == torch.float32 and lab_b["label"].dtype == torch.int64
            assert torch.equal(lab_a["image"], lab_b["image"])
            assert torch.equal(lab_a["label"], lab_b["label"])
            assert torch.equal(unl_a["image"], unl_b["image"]) and "label" not in unl_b


def test_predict_normalises_a_case_as_evaluation_does(example: tuple[str, Any]) -> None:
    """One normalisation per run, whatever the container: ``ssmis predict`` reads a case's
    own files with the run's recorded normalisation (``data.resolved_normalization``) and gets
    the network input evaluation gets (so the same probabilities). h5 layouts, whose files hold
    already-normalised intensities, record what produced them (raw scans need it)."""
    from ssmis.data.normalisation import ChannelNorm
    from ssmis.engine.data import resolve_normalisation
    from ssmis.predict import Job, _load_job, run_normalisation

    name, cfg = example
    layout = get_layout(name)(cfg.data)
    cfg, lines = resolve_normalisation(cfg, layout)
    records = cfg.data.resolved_normalization
    assert records is not None and len(records) == cfg.data.in_channels
    assert len([ln for ln in lines if ln.startswith("normalisation channel")]) == len(records)
    norms = run_normalisation(cfg, cfg.data.root)
    assert norms == [ChannelNorm.from_dict(r) for r in records]
    if not hasattr(layout, "catalog"):
        assert all(n.stored and n.source for n in norms), name
        return
    case_id = layout.split().val[0]
    info = layout.catalog.get(case_id)
    files = [Path(p) for p in layout.catalog.manifest["cases"][0]["source"]] \
        if name == "prepared" else info.images
    if name == "prepared":
        case_id = layout.catalog.manifest["cases"][0]["case"]
    case = next(iter(layout.eval_cases([case_id])))
    kind = "image" if files[0].suffix.lower() in (".png", ".jpg", ".tif", ".gif") else "nifti"
    image, _ = _load_job(Job(case_id, kind, files), cfg, norms)
    if cfg.data.spatial_dims == 2 and image.ndim == 4:
        image = np.moveaxis(image, cfg.data.slice_axis + 1, 1)
    expected = case.image if case.image.ndim == image.ndim else case.image[None]
    atol = 2e-3 * max(1.0, float(np.abs(expected).max())) if name == "prepared" else 1e-5
    np.testing.assert_allclose(image, expected, atol=atol)
