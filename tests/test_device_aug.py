"""The batched device form of the SSL4MIS 2D augmentation (``ssmis.data.device_aug``) against
the scipy path it replaces (``RandomGenerator2D``): the same pixels for every kind of draw,
shape, and zoom direction; and a whole training run that does not depend on the route."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ssmis.config import validate_config
from ssmis.data.device_aug import SliceBank, geometry, source_index
from ssmis.data.transforms import RandomGenerator2D, Ssl4mis2DParams, draw_ssl4mis_2d


class _Items:
    """A dataset of raw (C, H, W) slices with labels, as a layout's ``train_dataset`` with no
    transform returns them."""

    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray]) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: tuple[int, int]) -> dict:
        i = index[0]
        return {"image": torch.from_numpy(self.images[i]), "case": f"c{i}",
                "label": torch.from_numpy(self.labels[i].astype(np.int64))}


def _scipy(image: np.ndarray, label: np.ndarray, patch: tuple[int, int],
           seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The loader's per-channel route (``CaseDataset``): each channel with the same seed."""
    aug = RandomGenerator2D(patch)
    chans, out_label = [], None
    for c in range(image.shape[0]):
        img, lab = aug(image[c].copy(), label.copy(), np.random.default_rng(seed))
        chans.append(img)
        out_label = lab if out_label is None else out_label
    return np.stack(chans), out_label


def test_draw_is_the_transforms_draw() -> None:
    """Both routes take their parameters from one function, in the transform's order."""
    rng = np.random.default_rng(7)
    kinds = {"rot_flip": 0, "rotate": 0, "none": 0}
    for _ in range(2000):
        p = draw_ssl4mis_2d(rng)
        kinds["rot_flip" if p.rot_flip else "rotate" if p.angle is not None else "none"] += 1
        if p.angle is not None:
            assert -20 <= p.angle < 20
        assert 0 <= p.k < 4 and p.axis in (0, 1)
    # SSL4MIS: half rot90 + flip, a quarter rotation, a quarter zoom only
    assert 900 < kinds["rot_flip"] < 1100 and 400 < kinds["rotate"] < 600


@pytest.mark.parametrize("channels", [1, 3])
def test_gather_gives_the_scipy_pixels(channels: int) -> None:
    """Random sizes (odd, even, smaller and larger than the patch), every draw kind: image and
    label equal to the bit, zeros where scipy samples outside the slice."""
    rng = np.random.default_rng(0)
    images, labels, patches, seeds = [], [], [], []
    while len(images) < 120:
        h, w = (int(v) for v in rng.integers(9, 200, 2))
        patch = (int(rng.integers(8, 160)), int(rng.integers(8, 160)))
        if len(images) % 10 == 0:
            patch = (h, w)  # no zoom: RandomGenerator2D leaves the size alone
        images.append((rng.normal(size=(channels, h, w)) * 100).astype(np.float32))
        labels.append(rng.integers(0, 4, (h, w)).astype(np.uint8))
        patches.append(patch)
        seeds.append(int(rng.integers(0, 2**31)))
    bank = SliceBank(_Items(images, labels), True, torch.device("cpu"))
    seen = set()
    for i, (patch, seed) in enumerate(zip(patches, seeds, strict=True)):
        try:
            ref_img, ref_lab = _scipy(images[i], labels[i], patch, seed)
        except AssertionError:  # scipy's rounding gives another size: not a valid draw
            continue
        params = draw_ssl4mis_2d(np.random.default_rng(seed))
        seen.add("rot_flip" if params.rot_flip else params.angle is not None)
        out = bank.batch([i], [params], patch)
        assert np.array_equal(out["image"][0].numpy(), ref_img), (i, params)
        assert np.array_equal(out["label"][0].numpy(), ref_lab.astype(np.int64)), (i, params)
    assert seen == {"rot_flip", True, False}


def test_rotation_leaves_zero_corners_and_batches_mix_kinds() -> None:
    """A 20-degree rotation of a constant slice has zero corners (scipy's cval) and a full
    centre; one batch mixing all kinds and sizes equals each sample alone."""
    ones = np.ones((1, 64, 48), np.float32)
    bank = SliceBank(_Items([ones, ones[:, :40], ones[:, :, :30]],
                            [np.ones((64, 48), np.uint8), np.ones((40, 48), np.uint8),
                             np.ones((64, 30), np.uint8)]), True, torch.device("cpu"))
    params = [Ssl4mis2DParams(rot_flip=False, angle=19), Ssl4mis2DParams(True, k=3, axis=1),
              Ssl4mis2DParams(rot_flip=False)]
    out = bank.batch([0, 1, 2], params, (32, 32))
    rotated = out["image"][0, 0]
    assert rotated[0, 0] == 0 and rotated[-1, -1] == 0 and bool((rotated[8:24, 8:24] == 1).all())
    assert bool((out["image"][1:] == 1).all())
    for i in range(3):
        alone = bank.batch([i], [params[i]], (32, 32))
        assert torch.equal(alone["image"][0], out["image"][i])


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("axis", [0, 1])
def test_source_index_of_rot90_and_flip_at_the_same_size(k: int, axis: int) -> None:
    """rot90 by k then a flip of a 3 x 5 slice, no zoom: the offsets address exactly
    np.flip(np.rot90(x, k), axis)."""
    p = Ssl4mis2DParams(rot_flip=True, k=k, axis=axis)
    expected = np.flip(np.rot90(np.arange(15).reshape(3, 5), k), axis)
    within, valid = source_index(geometry([p], [(3, 5)], torch.device("cpu")), expected.shape)
    assert bool(valid.all())
    assert np.array_equal(within[0].numpy(), expected)


def _config(data: dict, out: Path, on_device: bool) -> object:
    return validate_config({
        "name": "route", "seed": 5, "output_dir": str(out),
        "data": {**data, "patch_size": [32, 32], "on_device": on_device},
        "model": {"name": "unet2d", "options": {"widths": [4, 4, 8, 8, 8]}},
        "method": {"name": "bcp", "params": {"pretrain_iterations": 1}},
        "train": {"iterations": 3, "batch_size": 4, "unlabeled_batch_size": 4,
                  "val_every": 3, "device": "cpu", "threads": 1},
        "eval": {"overlay_cases": 0}})


@pytest.mark.usefixtures("one_thread")
def test_training_does_not_depend_on_the_route(tmp_path: Path) -> None:
    """BCP (pre-training then copy-paste self-training, dropout on) trained with the slices on
    the device and with the DataLoader: the same losses at every step and the same weights."""
    from ssmis.data.layouts import get_layout
    from ssmis.engine.run import train_run

    data = get_layout("acdc_h5").write_example(tmp_path / "acdc")
    runs = {}
    for on_device in (False, True):
        runs[on_device] = train_run(_config(data, tmp_path / "runs", on_device),
                                    run_dir=tmp_path / f"run_{on_device}", verbose=False)
    rows = [[json.loads(line) for line in (runs[d] / "scalars.jsonl").read_text().splitlines()]
            for d in (False, True)]
    assert len(rows[0]) == 3
    assert [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]]
    log = (runs[True] / "train.log").read_text()
    assert "held and augmented on cpu" in log
    a, b = (load_file(runs[d] / "checkpoints" / "last.safetensors") for d in (False, True))
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("layout", "change"), [("la_h5", {}),
                                                 ("acdc_h5", {"resize": False}),
                                                 ("acdc_h5", {"augmentation": "synfoc"})])
def test_on_device_true_needs_the_2d_ssl4mis_resize(tmp_path: Path, layout: str,
                                                    change: dict) -> None:
    """3D patches, native-resolution crops and SynFoC's augmentation have no device form:
    asking for it is one line naming the field; auto quietly keeps the loader."""
    from ssmis.data.layouts import get_layout
    from ssmis.errors import SSMISError

    data = {**get_layout(layout).write_example(tmp_path / layout), **change}
    if change.get("augmentation") == "synfoc":
        data["patch_size"] = [32, 32]
    base = {"name": "x", "train": {"iterations": 2, "batch_size": 2}}
    assert validate_config({**base, "data": {**data, "on_device": "auto"}})
    with pytest.raises(SSMISError) as bad:
        validate_config({**base, "data": {**data, "on_device": "maybe"}})
    assert str(bad.value) == ("config: data.on_device: expected auto, true or false "
                              "(got 'maybe')")
    assert validate_config({**base, "data": {**data, "on_device": "False"}}).data.on_device \
        is False
    with pytest.raises(SSMISError) as err:
        validate_config({**base, "data": {**data, "on_device": True}})
    assert "data.on_device: true needs" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("workers", "free", "extra", "route"), [
    (0, None, {}, "held and augmented on cpu"),
    (0, None, {}, " KiB; data.on_device: auto)"),
    (2, None, {"on_device": True}, "; data.on_device: true; data.num_workers unused)"),
    (1, None, {}, "a DataLoader, augmented on the CPU (1 worker); data.on_device: auto leaves "
                  "CPU runs with loader workers to them"),
    (0, None, {"on_device": False}, "(0 workers); data.on_device: false"),
    (0, None, {"resize": False}, "data.on_device: auto, and data.resize: false has no device "
                                 "form"),
    (0, 1000, {}, "(0 workers); the training slices (about "),
])
def test_auto_route_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int,
                               free: int | None, extra: dict, route: str) -> None:
    """auto on the CPU: on without loader workers when the slices fit in a quarter of the
    free memory (estimated before anything is read in full), else the DataLoader; the log line
    says which route and why."""
    from ssmis.data.device_aug import DeviceBatchStream
    from ssmis.data.layouts import get_layout
    from ssmis.engine import data as engine_data

    if free is not None:
        monkeypatch.setattr(engine_data, "_available_memory", lambda device: free)
    data = get_layout("acdc_h5").write_example(tmp_path / "acdc")
    cfg = validate_config({"name": "x", "data": {**data, "patch_size": [32, 32],
                                                 "num_workers": workers, **extra},
                           "train": {"iterations": 2, "batch_size": 2}})
    layout = get_layout("acdc_h5")(cfg.data)
    routes: list[str] = []
    batches = engine_data.train_batches(cfg, layout.split(), 2, 0, layout=layout,
                                        device=torch.device("cpu"), log=routes.append)
    assert len(routes) == 1 and route in routes[0], routes
    if free is not None:
        assert routes[0].endswith("exceed a quarter of the 1.0 KiB free in host memory "
                                  "(data.on_device: auto)")
    assert isinstance(batches, DeviceBatchStream) == ("held" in routes[0])
    labeled, unlabeled = next(batches)
    assert labeled["image"].shape == (2, 1, 32, 32) and unlabeled is not None


def test_zoom_nearest_is_scipys_order_0_zoom() -> None:
    """Up and down, odd and even sizes, float and uint8 planes with leading axes: the same
    pixels as ``scipy.ndimage.zoom(order=0)`` of each plane."""
    from scipy import ndimage

    from ssmis.data.device_aug import zoom_nearest

    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(5, 300, 2))
        size = (int(rng.integers(4, 260)), int(rng.integers(4, 260)))
        planes = rng.normal(size=(3, 2, h, w)).astype(np.float32)
        try:
            ref = np.stack([[ndimage.zoom(p, (size[0] / h, size[1] / w), order=0) for p in q]
                            for q in planes])
        except ValueError:
            continue
        if ref.shape[-2:] != size:  # scipy's rounding gives another size: no such call
            continue
        assert np.array_equal(zoom_nearest(torch.from_numpy(planes), size).numpy(), ref)
        labels = (planes[0, 0] > 0).astype(np.uint8)
        assert np.array_equal(zoom_nearest(torch.from_numpy(labels), size).numpy(),
                              ndimage.zoom(labels, (size[0] / h, size[1] / w), order=0))
        checked += 1
    assert checked > 40


def test_slicewise_prediction_is_the_ssl4mis_route() -> None:
    """``predict_slicewise`` (zooms and argmax on the device) gives the label map of SSL4MIS's
    ``test_single_volume``: each slice zoomed to the patch with scipy (order 0), argmax, the
    labels zoomed back with scipy (order 0)."""
    from scipy import ndimage

    from ssmis.eval.inference import predict_slicewise

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 4, 3, padding=1)
    volume = np.random.default_rng(1).normal(size=(5, 53, 47)).astype(np.float32)
    with torch.no_grad():
        got = predict_slicewise(conv, volume, (32, 32), batch_size=2)
        expected = np.zeros_like(got)
        for i, s in enumerate(volume):
            small = ndimage.zoom(s, (32 / 53, 32 / 47), order=0)
            lab = conv(torch.from_numpy(small)[None, None]).argmax(1)[0].numpy().astype(np.uint8)
            expected[i] = ndimage.zoom(lab, (53 / 32, 47 / 32), order=0)
    assert got.dtype == np.uint8 and np.array_equal(got, expected)
    assert len(np.unique(got)) > 1


@pytest.mark.usefixtures("one_thread")
def test_validation_reads_its_cases_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four validations read the validation files once (then from memory); with the memory cap
    at 0 they read them every time; the scores are the same either way."""
    from ssmis.data.layouts import get_layout
    from ssmis.engine import selection as selection_mod
    from ssmis.engine.run import train_run

    reads: list[list[str]] = []
    original = selection_mod.eval_cases

    def counting(cfg, ids, layout=None):  # noqa: ANN001, ANN202
        reads.append(list(ids))
        return original(cfg, ids, layout)

    monkeypatch.setattr(selection_mod, "eval_cases", counting)
    data = get_layout("acdc_h5").write_example(tmp_path / "acdc")
    cfg = validate_config({
        "name": "val", "seed": 1, "output_dir": str(tmp_path / "runs"),
        "data": {**data, "patch_size": [32, 32]},
        "model": {"name": "unet2d", "options": {"widths": [4, 4, 8, 8, 8]}},
        "method": {"name": "supervised"},
        "train": {"iterations": 4, "batch_size": 2, "val_every": 1, "device": "cpu",
                  "threads": 1},
        "eval": {"overlay_cases": 0}})
    scores = []
    for cap in (selection_mod.VAL_CACHE_BYTES, 0):
        monkeypatch.setattr(selection_mod, "VAL_CACHE_BYTES", cap)
        reads.clear()
        run = train_run(cfg, run_dir=tmp_path / f"run_{cap}", verbose=False)
        val = json.loads((run / "splits.json").read_text())["val"]
        assert val and reads == [val] * (1 if cap else 4)
        rows = (run / "val.jsonl").read_text().splitlines()
        scores.append([json.loads(line)["val_dice"] for line in rows])
    assert len(scores[0]) == 4 and scores[0] == scores[1]


def test_bank_refuses_labels_beyond_uint8() -> None:
    from ssmis.errors import SSMISError

    items = _Items([np.zeros((1, 4, 4), np.float32)], [np.full((4, 4), 300)])
    with pytest.raises(SSMISError, match="c0 has label values outside 0..255"):
        SliceBank(items, True, torch.device("cpu"))


def test_bank_refuses_a_label_of_another_shape() -> None:
    from ssmis.errors import SSMISError

    items = _Items([np.zeros((1, 4, 6), np.float32)], [np.zeros((6, 4), np.uint8)])
    with pytest.raises(SSMISError, match=r"c0 has a \(6, 4\) label for a \(4, 6\) image"):
        SliceBank(items, True, torch.device("cpu"))


@pytest.mark.parametrize("setting", ["auto", True])
def test_a_bank_that_cannot_be_built_falls_back_under_auto(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: object) -> None:
    """auto takes the DataLoader, saying why; true stops with the one-line reason."""
    from ssmis.data.layouts import get_layout
    from ssmis.engine import data as engine_data
    from ssmis.errors import SSMISError

    def refuse(*args: object) -> None:
        raise SSMISError("data.on_device: item x has label values outside 0..255; set "
                         "data.on_device: false")

    monkeypatch.setattr(engine_data, "SliceBank", refuse)
    data = get_layout("acdc_h5").write_example(tmp_path / "acdc")
    cfg = validate_config({"name": "x", "data": {**data, "patch_size": [32, 32],
                                                 "on_device": setting},
                           "train": {"iterations": 2, "batch_size": 2}})
    layout = get_layout("acdc_h5")(cfg.data)
    routes: list[str] = []

    def batches() -> object:
        return engine_data.train_batches(cfg, layout.split(), 2, 0, layout=layout,
                                         device=torch.device("cpu"), log=routes.append)

    if setting is True:
        with pytest.raises(SSMISError, match="outside 0..255"):
            batches()
        return
    stream = batches()
    assert routes == ["training batches: a DataLoader, augmented on the CPU (0 workers); "
                      "data.on_device: item x has label values outside 0..255; set "
                      "data.on_device: false (data.on_device: auto)"]
    assert next(stream)[0]["image"].shape == (2, 1, 32, 32)


def test_gather_on_tiny_and_extreme_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """1- and 2-pixel axes, extreme aspect ratios, patches smaller and larger than the slice,
    every rot90/flip, the extreme angles: the scipy route's pixels (its draw forced)."""
    from ssmis.data import transforms

    sizes = [(1, 1), (1, 7), (7, 1), (2, 2), (2, 3), (3, 500), (500, 3), (217, 181)]
    patches = [(2, 2), (8, 8), (16, 12), (64, 2), (256, 256)]
    draws = ([Ssl4mis2DParams(True, k=k, axis=a) for k in range(4) for a in (0, 1)]
             + [Ssl4mis2DParams(False, angle=t) for t in (-20, -1, 0, 7, 19)]
             + [Ssl4mis2DParams(False)])
    rng = np.random.default_rng(5)
    images = [rng.normal(size=(2, h, w)).astype(np.float32) for h, w in sizes]
    labels = [rng.integers(1, 4, (h, w)).astype(np.uint8) for h, w in sizes]
    bank = SliceBank(_Items(images, labels), True, torch.device("cpu"))
    compared = 0
    for params in draws:
        monkeypatch.setattr(transforms, "draw_ssl4mis_2d", lambda rng, p=params: p)
        for patch in patches:
            out = bank.batch(list(range(len(sizes))), [params] * len(sizes), patch)
            for i in range(len(sizes)):
                try:
                    ref_img, ref_lab = _scipy(images[i], labels[i], patch, 0)
                except AssertionError:  # scipy's rounding gives another size: no such call
                    continue
                assert np.array_equal(out["image"][i].numpy(), ref_img), (sizes[i], patch, params)
                assert np.array_equal(out["label"][i].numpy(), ref_lab), (sizes[i], patch, params)
                compared += 1
    assert compared > 500


def test_slicewise_prediction_leaves_the_volume_alone() -> None:
    """The network gets a copy even when the slices already have the patch size: a predictor
    that writes into its input does not change the (cached) case."""
    from ssmis.eval.inference import predict_slicewise

    volume = np.ones((2, 32, 32), np.float32)

    def rude(batch: torch.Tensor) -> torch.Tensor:
        batch.mul_(0)
        return torch.zeros(batch.shape[0], 2, 32, 32)

    predict_slicewise(rude, volume, (32, 32))
    assert float(volume.sum()) == 2 * 32 * 32
