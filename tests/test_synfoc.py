"""SynFoC pieces (spec /work/shared/specs/synfoc.md section 3) and an engine run with a tiny
SAM on mixed-domain images (small checkpoints, two optimizers, best-student selection)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ssmis.cli import main
from ssmis.methods import synfoc as sf
from ssmis.mixing import cutmix_box, mix
from ssmis.optim import CombinedOptimizer
from tests.test_mixed_domain import DOMAINS, make_domains
from tests.test_sam_lora import GEOMETRY, _require_sam

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dice_star_and_smc_alpha() -> None:
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    b = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2], b[0, :1] = True, True  # |a| 8, |b| 4, overlap 4
    d = sf.dice_star(a, b)
    assert d[0].item() == pytest.approx((2 * 4 + 1) / (12 + 1.001))
    assert d[1].item() == 1.0  # both empty
    # alpha = self x mutual; fundus-style overlapping parts cup {1}, disc {1, 2}
    student = torch.tensor([[[1, 2], [0, 0]]])
    teacher = torch.tensor([[[1, 2], [2, 0]]])
    sam = torch.tensor([[[1, 2], [2, 0]]])
    alpha = sf.smc_alpha(student, teacher, sam, [[1], [1, 2]])
    self_c = 0.5 * (3 / 3.001 + 5 / 6.001)  # cup: 1 vs 1 pixel; disc: 2 vs 3, overlap 2
    mutual = 0.5 * (3 / 3.001 + 7 / 7.001)  # teacher and SAM agree: cup 1, disc 3 pixels
    assert alpha.item() == pytest.approx(self_c * mutual, rel=1e-5)


def test_fuse_weights_the_unet_by_alpha() -> None:
    p_sam = torch.zeros(2, 2, 4, 4)
    p_sam[:, 0] = 1.0  # SAM says background everywhere
    p_unet = torch.zeros(2, 2, 8, 8)
    p_unet[:, 1] = 1.0  # U-Net says foreground everywhere
    out = sf.fuse_pseudo_labels(p_sam, p_unet, torch.tensor([0.0, 1.0]), 0.95)
    assert out["y_s"].shape == (2, 8, 8) and out["y_r"].shape == (2, 4, 4)
    assert (out["y_s"][0] == 0).all() and (out["y_s"][1] == 1).all()
    assert out["m_s"].all() and out["m_r"].all()
    half = sf.fuse_pseudo_labels(p_sam, p_unet, torch.tensor([0.5, 0.5]), 0.95)
    assert not half["m_s"].any()  # 0.5 confidence is below the threshold


def test_cutmix_box_statistics() -> None:
    g = torch.Generator().manual_seed(0)
    boxes = [cutmix_box(64, generator=g) for _ in range(300)]
    fractions = torch.tensor([float(b.mean()) for b in boxes])
    assert all(set(b.unique().tolist()) <= {0.0, 1.0} for b in boxes)
    assert 0.17 < fractions.mean() < 0.25  # spec: mean area fraction ~0.21
    assert fractions.min() > 0.01 and fractions.max() <= 0.41
    # copy-paste: labeled content inside the box, unlabeled outside
    m = boxes[0][None]
    mixed = mix(torch.zeros(1, 1, 64, 64), torch.ones(1, 1, 64, 64), m, ones="paste",
                batched=True)
    assert torch.equal(mixed[0, 0], m[0])
    labels = mix(torch.zeros(1, 64, 64, dtype=torch.long), torch.full((1, 64, 64), 2), m,
                 ones="paste", batched=True)
    assert torch.equal(labels[0], (m[0] * 2).long())


def test_consensus_divergence() -> None:
    z_sam = torch.zeros(1, 2, 2, 2)
    z_sam[:, 1, 0] = 5.0  # SAM: top row foreground
    z_unet = torch.zeros(1, 2, 4, 4)
    z_unet[:, 1] = 5.0  # U-Net: all foreground
    cons, div = sf.consensus_divergence(z_sam, z_unet)
    p = torch.softmax(torch.tensor([0.0, 5.0]), 0).clamp(1e-10, 1)
    ent = float(-(p * p.log()).sum())
    # agreement: top half at both sizes; entropy averaged over B x K x pixels
    assert cons.item() == pytest.approx(0.5 * (ent * 2 / (2 * 4) + ent * 8 / (2 * 16)), rel=1e-5)
    q = torch.softmax(torch.tensor([0.0, 0.0]), 0)
    expected_div = float(((q - p) ** 2).sum()) * 8 / (2 * 16)
    assert div.item() == pytest.approx(expected_div, rel=1e-5)
    z_sam.requires_grad_(True)
    z_unet.requires_grad_(True)
    sum(sf.consensus_divergence(z_sam, z_unet)).backward()
    assert z_sam.grad.abs().sum() > 0 and z_unet.grad.abs().sum() > 0  # nothing detached


def test_ramp_matches_the_spec() -> None:
    assert sf.ramp_weight(0, 1.0, 200, 30000) == pytest.approx(math.exp(-5), rel=1e-6)
    assert sf.ramp_weight(15000, 1.0, 200, 30000) == pytest.approx(0.2865, abs=1e-3)
    assert sf.ramp_weight(29999, 1.0, 200, 30000) < 1.0
    assert sf.ramp_weight(30000, 1.0, 200, 30000) == 1.0
    assert sf.ramp_weight(149, 1.0, 200, 30000) == sf.ramp_weight(0, 1.0, 200, 30000)


def test_strong_augment() -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 1, 64, 64)
    y = sf.strong_augment(x, [0.1, 2.0], [0.1, 2.0], [0.1, 2.0])
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(x, y)
    # the blur kernel preserves constants (normalised), including at the reflected borders
    c = torch.full((2, 3, 16, 16), 0.4)
    assert torch.allclose(sf.gaussian_blur(c, torch.tensor([1.0, 2.0]), 7), c, atol=1e-6)


def _tiny_sam_checkpoint(path: Path) -> Path:
    from ssmis.models.sam_lora import build_sam

    torch.manual_seed(0)
    torch.save(build_sam(2, image_size=128, **GEOMETRY).state_dict(), path)
    return path


def test_synfoc_trains_through_the_engine(tmp_path: Path) -> None:
    _require_sam()
    root = make_domains(tmp_path / "data")
    ckpt = _tiny_sam_checkpoint(tmp_path / "tiny_sam.pth")
    cfg = {
        "name": "synfoc-tiny", "seed": 1, "output_dir": str(tmp_path / "runs"),
        "data": {"layout": "images", "root": str(root), "num_classes": 2,
                 "mask_values": {0: 0, 255: 1}, "labeled_domain": "siteA",
                 "labeled_count": 2, "val_count": 2, "test_count": 6, "patch_size": [32, 32]},
        "model": {"name": "unet2d", "options": {"widths": [4, 4, 8, 8, 8]}},
        "method": {"name": "synfoc", "params": {
            "sam": {**GEOMETRY, "image_size": 64, "checkpoint": str(ckpt)}}},
        "train": {"iterations": 3, "batch_size": 2, "unlabeled_batch_size": 2, "lr": 0.03,
                  "val_every": 3, "threads": 1, "device": "cpu"},
        "eval": {"unit": "voxel", "overlay_cases": 0},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", str(path), "--run-dir", str(run), "--quiet"]) == 0
    weights = load_file(str(run / "checkpoints" / "last.safetensors"))
    # small checkpoints: no frozen encoder weights (student: from the file; teacher: shared)
    assert not any("patch_embed" in k or "qkv.base" in k for k in weights)
    assert any(k.startswith("sam.") and ".lora_" in k for k in weights)
    assert any(k.startswith("sam_teacher.sam.mask_decoder.") for k in weights)
    assert any(k.startswith("unet.") for k in weights)
    val = [json.loads(line) for line in (run / "val.jsonl").read_text().splitlines()]
    assert val[-1]["predictor"] in ("sam", "unet")
    assert {"val_dice_sam", "val_dice_unet"} <= set(val[-1])
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["per_domain"]) == set(DOMAINS)
    rows = [json.loads(line) for line in (run / "scalars.jsonl").read_text().splitlines()]
    assert {"loss_sup_sam", "loss_unsup_unet", "loss_cons", "loss_div", "alpha"} <= set(rows[0])
    # resume from the last checkpoint is accepted (optimizer = AdamW + SGD)
    assert main(["train", "--resume", str(run), "train.iterations=4", "--quiet"]) == 0
    assert json.loads((run / "train_summary.json").read_text())["iterations"] == 4


def test_combined_optimizer_lr_scale_and_state(tmp_path: Path) -> None:
    _require_sam()
    from ssmis.config import validate_config
    from ssmis.methods import build_method

    cfg = validate_config({
        "data": {"layout": "acdc_h5", "root": str(tmp_path), "num_classes": 2,
                 "labeled_patients": 1, "patch_size": [32, 32]},
        "model": {"name": "unet2d", "options": {"widths": [4, 4, 8, 8, 8]}},
        "method": {"name": "synfoc", "params": {"sam": {**GEOMETRY, "image_size": 64}}},
        "train": {"iterations": 3, "batch_size": 2, "unlabeled_batch_size": 2, "lr": 0.03}})
    method = build_method(cfg)
    opt = method.make_optimizer(cfg.train)
    assert isinstance(opt, CombinedOptimizer)
    adamw, sgd = opt.optimizers
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(sgd, torch.optim.SGD)
    assert adamw.param_groups[0]["lr_scale"] == pytest.approx(1.2e-4 / 0.03)
    sam_ids = {id(p) for p in adamw.param_groups[0]["params"]}
    assert sam_ids == {id(p) for p in method.sam.parameters() if p.requires_grad}
    assert not sam_ids & {id(p) for p in sgd.param_groups[0]["params"]}
    opt.load_state_dict(opt.state_dict())
    # the teacher SAM shares the student's frozen encoder tensors
    s_enc = method.sam.sam.image_encoder.patch_embed.proj.weight
    assert method.sam_teacher.sam.image_encoder.patch_embed.proj.weight is s_enc
