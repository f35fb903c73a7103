"""sam_lora: tiny random SAMs in the original checkpoint format, loaded at another size; LoRA
identity at init; trainable set; small checkpoints. Skipped without ``ssmis[sam]``."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssmis.errors import SSMISError
from ssmis.models import build_model
from ssmis.models import sam_lora as sl


def _require_sam() -> None:
    try:
        sl.import_sam_modeling()
    except SSMISError:
        pytest.skip("segment-anything is not installed (pip install 'ssmis[sam]')")


# original ViT-B at 1024 px has a 64 x 64 token grid, window 14, global blocks 2, 5, 8, 11;
# this one: 128 px / 16 = 8 x 8 grid, window 2, global block 1 (same key names and layout)
GEOMETRY = {"embed_dim": 16, "depth": 2, "num_heads": 2, "global_attn_indexes": [1],
            "window_size": 2, "prompt_embed_dim": 16, "decoder_mlp_dim": 32,
            "decoder_heads": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A random SAM at its 'native' size (128 px), 4 mask tokens (num_multimask_outputs 3),
    saved as a plain state dict like ``sam_vit_b_01ec64.pth``."""
    _require_sam()
    torch.manual_seed(0)
    sam = sl.build_sam(4, image_size=128, **GEOMETRY)
    with torch.no_grad():  # non-zero rel-pos tables so that resizing is visible
        for name, p in sam.named_parameters():
            if "rel_pos" in name:
                p.normal_()
    path = tmp_path / "tiny_sam.pth"
    torch.save(sam.state_dict(), path)
    return path


def _model(checkpoint: Path | None, num_classes: int = 2, size: int = 64, **extra):
    opts = {**GEOMETRY, "image_size": size, "checkpoint": str(checkpoint) if checkpoint else None,
            **extra}
    return build_model("sam_lora", 1, num_classes, **opts)


def test_load_at_another_size_reports_resized_keys(checkpoint: Path) -> None:
    model = _model(checkpoint, size=64)
    report = model.load_report
    assert report is not None
    raw = torch.load(checkpoint, weights_only=True)
    # absolute position embedding 8x8 -> 4x4; global block rel-pos 15 -> 7; window blocks kept
    assert report.resized["image_encoder.pos_embed"] == ((1, 8, 8, 16), (1, 4, 4, 16))
    assert report.resized["image_encoder.blocks.1.attn.rel_pos_h"] == ((15, 8), (7, 8))
    assert report.resized["image_encoder.blocks.1.attn.rel_pos_w"] == ((15, 8), (7, 8))
    assert "image_encoder.blocks.0.attn.rel_pos_h" in report.loaded
    assert len(report.resized) == 3
    # decoder heads dropped (SynFoC's load_from) and freshly initialised
    assert "mask_decoder.mask_tokens.weight" in report.dropped
    assert "mask_decoder.mask_tokens.weight" in report.initialised
    assert any("output_hypernetworks_mlps" in k for k in report.initialised)
    assert any("iou_prediction_head" in k for k in report.initialised)
    assert "mask_decoder.iou_token.weight" in report.loaded
    assert not any(k.startswith("image_encoder.") for k in report.initialised)
    # loaded encoder weights are the checkpoint's (LoRA wraps qkv as .base)
    blocks = model.sam.image_encoder.blocks
    assert torch.equal(blocks[0].attn.qkv.base.weight,
                       raw["image_encoder.blocks.0.attn.qkv.weight"])
    assert torch.equal(model.sam.image_encoder.patch_embed.proj.weight,
                       raw["image_encoder.patch_embed.proj.weight"])
    assert "loaded" in report.summary()


def test_keep_decoder_heads_when_shapes_match(checkpoint: Path) -> None:
    model = _model(checkpoint, num_classes=4, size=128, keep_decoder_heads=True)
    report = model.load_report
    assert not report.resized
    assert report.initialised == []
    raw = torch.load(checkpoint, weights_only=True)
    assert torch.equal(model.sam.mask_decoder.mask_tokens.weight,
                       raw["mask_decoder.mask_tokens.weight"])


def test_wrong_geometry_is_a_user_error(checkpoint: Path) -> None:
    with pytest.raises(SSMISError, match="embed_dim"):
        _model(checkpoint, embed_dim=32)


def test_lora_is_identity_at_init_and_trainable_set(checkpoint: Path) -> None:
    torch.manual_seed(1)
    model = _model(checkpoint, num_classes=3)
    plain = copy.deepcopy(model)
    for block in plain.sam.image_encoder.blocks:
        block.attn.qkv = block.attn.qkv.base  # the un-adapted encoder
    x = torch.rand(2, 1, 48, 48)
    out = model(x)
    assert out.shape == (2, 3, 48, 48)
    assert model.low_res_logits(x).shape == (2, 3, 16, 16)
    assert torch.allclose(out, plain(x), atol=1e-6)
    # batch elements are independent (prompts broadcast over the batch)
    assert torch.allclose(model(x[1:]), out[1:], atol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trainable"
    assert all(sl.is_trainable_key(n) for n in trainable)
    lora = [n for n in trainable if ".lora_" in n]
    assert len(lora) == 4 * GEOMETRY["depth"]
    assert all("qkv.lora_" in n for n in lora)
    assert any(n.startswith("sam.mask_decoder.") for n in trainable)
    assert any(n.startswith("sam.prompt_encoder.") for n in trainable)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(n.startswith("sam.image_encoder.") and ".lora_" not in n for n in frozen)
    out.sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    assert model.sam.image_encoder.blocks[0].attn.qkv.lora_b_q.weight.grad is not None
    # a non-zero B changes the output: the q and v slices are adapted, k is not
    qkv = model.sam.image_encoder.blocks[0].attn.qkv
    with torch.no_grad():
        qkv.lora_b_v.weight.normal_()
        tokens = torch.randn(1, 4, 4, 16)
        delta = qkv(tokens) - qkv.base(tokens)
    assert delta[..., :16].abs().max() == 0  # B_q still zero
    assert delta[..., 16:32].abs().max() == 0  # k untouched
    assert delta[..., 32:].abs().max() > 0


def test_small_checkpoints_round_trip(checkpoint: Path, tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = _model(checkpoint)
    with torch.no_grad():  # make the trainable part differ from a fresh model
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    small = sl.trainable_state_dict(model)
    assert all(sl.is_trainable_key(k) for k in small)
    assert not any(k.startswith("sam.image_encoder.") and ".lora_" not in k for k in small)
    path = tmp_path / "trainable.pt"
    torch.save(small, path)
    torch.manual_seed(3)
    other = _model(checkpoint)
    x = torch.rand(1, 1, 64, 64)
    assert not torch.allclose(other(x), model(x))
    sl.load_trainable_state_dict(other, torch.load(path, weights_only=True))
    assert torch.allclose(other(x), model(x), atol=1e-6)
    # with a checkpoint file the module's own state_dict is the small one, and loads strictly
    state = model.state_dict()
    assert set(state) == set(small)
    assert not any("patch_embed" in k for k in state)
    third = _model(checkpoint)
    third.load_state_dict(state)
    assert torch.allclose(third(x), model(x), atol=1e-6)
    with pytest.raises(SSMISError, match="missing"):
        sl.load_trainable_state_dict(third, {})


def test_random_init_saves_everything() -> None:
    _require_sam()
    model = _model(None)
    assert model.save_frozen
    assert any("patch_embed" in k for k in model.state_dict())


def test_import_ssmis_does_not_need_segment_anything() -> None:
    code = ("import sys, ssmis.methods, ssmis.models, ssmis.cli; "
            "assert 'segment_anything' not in sys.modules, 'imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_extra_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name.startswith("segment_anything"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sl.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SSMISError, match=r"pip install 'ssmis\[sam\]'"):
        build_model("sam_lora", 1, 2, image_size=64, **GEOMETRY)
