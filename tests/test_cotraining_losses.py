"""Hand-checked values of the co-training pieces (CPS, CML, ALHVR) on tiny tensors, the
predictor choice of the two-network methods, and the engine's validation-time pick."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssmis.config import validate_config
from ssmis.methods import METHODS
from ssmis.methods.alhvr import (
    adaptive_threshold,
    alhvr_dice_loss,
    competition_teacher,
    cross_prototype_loss,
    dtct_loss,
    feature_dropout,
    feature_noise,
    masked_prototypes,
    region_masks,
    sharpen,
)
from ssmis.methods.cml import heterogeneous_targets
from ssmis.methods.cotraining import average_logits, cosine_discrepancy, init_conv_weights
from ssmis.methods.cps import cps_loss
from tests.conftest import tiny_config, tiny_method_config

pytestmark = pytest.mark.usefixtures("one_thread")


# -- ALHVR: threshold and regions ----------------------------------------------------------------


def test_adaptive_threshold_is_mean_of_lowest_fraction() -> None:
    conf = torch.tensor([[0.9, 0.1], [0.3, 1.0], [0.2, 0.95]])  # N = 6
    # beta 0.8 -> k = 4 lowest: 0.1, 0.2, 0.3, 0.9
    assert float(adaptive_threshold(conf, 0.8)) == pytest.approx(0.375)
    assert float(adaptive_threshold(conf, 0.5)) == pytest.approx(0.2)  # 0.1, 0.2, 0.3
    assert float(adaptive_threshold(conf, 0.01)) == pytest.approx(0.1)  # at least one value
    assert float(adaptive_threshold(conf, 1.0)) == pytest.approx(float(conf.mean()))


def test_region_masks() -> None:
    c1 = torch.tensor([0.2, 0.2, 0.5, 0.5, 0.3, 0.3])
    c2 = torch.tensor([0.2, 0.5, 0.2, 0.5, 0.3, 0.4])
    r_u, r_12, r_21 = region_masks(c1, c2, torch.tensor(0.3))
    assert r_u.tolist() == [1, 0, 0, 0, 0, 0]  # both below gamma
    assert r_12.tolist() == [0, 1, 0, 0, 0, 1]  # net 1 <= gamma (incl. equal), net 2 confident
    assert r_21.tolist() == [0, 0, 1, 0, 0, 0]
    # pixel 3: reliable-stable; pixel 4 (both == gamma): in no region
    assert r_u.dtype == torch.float32


# -- ALHVR: prototypes and CG-CPCL ----------------------------------------------------------------


def test_masked_prototypes_per_sample_mean_then_batch_mean() -> None:
    feats = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]],
                          [[4.0, 4.0, 4.0], [1.0, 1.0, 1.0]]])  # B=2, D=2, V=3
    labels = torch.tensor([[0, 0, 1], [1, 1, 1]])
    protos = masked_prototypes(feats, labels, 2)
    # class 0: sample 0 -> (1.5, 0) (eps 1e-5 in the count), sample 1 absent -> 0; mean (0.75, 0)
    # class 1: sample 0 -> (3, 0), sample 1 -> (4, 1); mean (3.5, 0.5)
    assert protos.shape == (2, 2)
    assert torch.allclose(protos, torch.tensor([[0.75, 0.0], [3.5, 0.5]]), atol=1e-4)
    # 2D spatial input gives the same as flattened
    p2 = masked_prototypes(feats.reshape(2, 2, 1, 3), labels.reshape(2, 1, 3), 2)
    assert torch.allclose(p2, protos)


def _cpcl_example():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # C=2, D=2
    # B=2, D=2, V=2 (as 1 x 2 images)
    feats = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]],
                          [[[0.0, 1.0]], [[1.0, 1.0]]]])
    target = torch.tensor([[[0, 1]], [[0, 1]]])
    region = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])
    a = math.log(1 + math.exp(-1))  # CE of cos logits (1, 0) vs class 0
    b = math.log(1 + math.exp(1))  # (0, 1) vs class 0
    c = math.log(2.0)  # (r, r) vs class 1
    return feats, protos, target, region, a, b, c


def test_cross_prototype_loss_intended() -> None:
    feats, protos, target, region, a, b, c = _cpcl_example()
    l_ce, l_cos = cross_prototype_loss(feats, protos, target, region, ce_mode="per_pixel",
                                       cos_mode="target_class")
    assert float(l_ce) == pytest.approx((a + b + c) / 3, rel=1e-5)
    # 1 - cos to the target prototype over the region: 0, 1, 1 - 1/sqrt2
    assert float(l_cos) == pytest.approx((2 - 1 / math.sqrt(2)) / 3, rel=1e-5)


def test_cross_prototype_loss_faithful_quirks() -> None:
    feats, protos, target, region, a, b, c = _cpcl_example()
    l_ce, l_cos = cross_prototype_loss(feats, protos, target, region)
    # broadcast: sum_v (sum_i R[i, v]) (sum_j ce[j, v]) / sum R, with column sums R = (2, 1),
    # ce = (a + b, a + c) (sample 0 pixel 1 has ce = a although outside the region)
    assert float(l_ce) == pytest.approx((2 * (a + b) + (a + c)) / 3, rel=1e-5)
    # (1 - s) over ALL classes, mean over B x C x V = 8: 1 + 1 + 2 (1 - 1/sqrt2)
    assert float(l_cos) == pytest.approx((2 + 2 * (1 - 1 / math.sqrt(2))) / 8, rel=1e-5)


def test_cross_prototype_loss_scaler_and_gradient_to_prototypes() -> None:
    feats, protos, target, region, *_ = _cpcl_example()
    protos = protos.clone().requires_grad_(True)
    l_ce, l_cos = cross_prototype_loss(feats, protos, target, region, scaler=2.0)
    (l_ce + l_cos).backward()
    assert protos.grad is not None and protos.grad.abs().sum() > 0  # no stop-gradient (code)


# -- ALHVR: sharpening, teacher, DTCT, Dice -------------------------------------------------------


def test_sharpen_not_renormalised_by_default() -> None:
    p = torch.tensor([0.5, 0.3, 0.15, 0.05]).view(1, 4, 1)
    s = sharpen(p, 0.1)
    expected_1 = 0.3**10 / (0.3**10 + 0.7**10)
    assert s[0, :, 0].tolist() == pytest.approx([0.5, expected_1, 0.15**10 / (0.15**10 + 0.85**10),
                                                 0.05**10 / (0.05**10 + 0.95**10)], rel=1e-4)
    assert float(s.sum()) == pytest.approx(0.5002, abs=1e-4)  # does not sum to 1
    r = sharpen(p, 0.1, renormalize=True)
    assert float(r.sum()) == pytest.approx(1.0)
    assert float(r[0, 0, 0]) == pytest.approx(0.5 / float(s.sum()))
    two = torch.tensor([0.8, 0.2]).view(1, 2, 1)  # binary: already sums to 1
    assert torch.allclose(sharpen(two, 0.1), sharpen(two, 0.1, renormalize=True))


def _dtct_example():
    # B=1, C=2, V=2: pixel 0 teacher = net 2 (0.8 > 0.6), pixel 1 teacher = net 1 (0.7 > 0.55)
    p1 = torch.tensor([[[0.6, 0.3], [0.4, 0.7]]])
    p2 = torch.tensor([[[0.8, 0.55], [0.2, 0.45]]])
    p_pert = torch.full((1, 2, 2), 0.5)
    region = torch.tensor([[1.0, 0.0]])
    return p1, p2, p_pert, region


def test_competition_teacher() -> None:
    p1, p2, _, _ = _dtct_example()
    t = competition_teacher(p1, p2)
    assert t[0, :, 0].tolist() == pytest.approx([0.8, 0.2])
    assert t[0, :, 1].tolist() == pytest.approx([0.3, 0.7])


def test_dtct_loss_values() -> None:
    p1, p2, p_pert, region = _dtct_example()
    mse, ent = dtct_loss(p_pert, p1, p1, p2, region, temperature=0.5)
    s0 = 0.64 / (0.64 + 0.04)  # sharpened teacher of pixel 0, class 0 (T = 0.5 squares)
    s1 = 0.04 / (0.64 + 0.04)
    assert float(mse) == pytest.approx((0.5 - s0) ** 2 + (0.5 - s1) ** 2, rel=1e-5)
    h_clean = -(0.6 * math.log(0.6 + 1e-6) + 0.4 * math.log(0.4 + 1e-6))
    h_pert = -2 * 0.5 * math.log(0.5 + 1e-6)
    # faithful: averaged over all B x V = 2 pixels (zeros outside the region)
    assert float(ent) == pytest.approx((h_clean + h_pert) / 2, rel=1e-5)
    _, ent_r = dtct_loss(p_pert, p1, p1, p2, region, temperature=0.5, entropy_over_region=True)
    assert float(ent_r) == pytest.approx(h_clean + h_pert, rel=1e-5)


def test_dtct_teacher_gradient_and_detach() -> None:
    p1, p2, p_pert, region = _dtct_example()
    p2 = p2.clone().requires_grad_(True)
    mse, _ = dtct_loss(p_pert, p1, p1, p2, region, temperature=0.5)
    mse.backward()
    assert p2.grad is not None and p2.grad.abs().sum() > 0  # the winning teacher is updated
    p2.grad = None
    mse, _ = dtct_loss(p_pert, p1, p1, p2, region, temperature=0.5, detach_teacher=True)
    assert not mse.requires_grad


def test_alhvr_dice_without_factor_two() -> None:
    label = torch.tensor([[0, 1, 1, 0]])
    perfect = F.one_hot(label, 2).movedim(-1, 1).float()
    assert float(alhvr_dice_loss(perfect, label)) == pytest.approx(0.5)  # the code's bug
    assert float(alhvr_dice_loss(perfect, label, factor_two=True)) == pytest.approx(0.0, abs=1e-6)
    half = torch.full((1, 2, 4), 0.5)  # sum pg = 1, sum p^2 = 1, sum g^2 = 2 per class
    assert float(alhvr_dice_loss(half, label)) == pytest.approx(1 - 1 / 3)
    assert float(alhvr_dice_loss(half, label, factor_two=True)) == pytest.approx(1 - 2 / 3)


def test_feature_perturbations() -> None:
    torch.manual_seed(0)
    x = torch.ones(2, 3, 4, 4)
    x[0, :, 1, 2] = 5.0  # the most activated position of sample 0
    d = feature_dropout(x)
    assert float(d[0, :, 1, 2].abs().sum()) == 0.0
    assert float(d[0].abs().sum()) == 15 * 3  # everything else kept (1 < 0.7 x 5)
    assert float(d[1].abs().sum()) == 0.0  # flat map: every position reaches the threshold
    n = feature_noise(x, 0.3)
    ratio = n / x
    assert torch.equal(ratio[0], ratio[1])  # shared across the batch
    assert float((ratio - 1).abs().max()) <= 0.3


# -- CML -----------------------------------------------------------------------------------------


def test_cosine_discrepancy_value_and_stop_gradient() -> None:
    e_a = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]], requires_grad=True)  # B=1, C=2, V=2
    e_b = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], requires_grad=True)
    d = cosine_discrepancy(e_a, e_b)
    assert float(d.detach()) == pytest.approx(1 + (1 + 1 / math.sqrt(2)) / 2, rel=1e-6)
    d.backward()
    assert e_a.grad is not None and e_b.grad is None


def test_heterogeneous_targets() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])  # 1 = from u_a (outside the box)
    pl1_a, pl1_b = torch.full((1, 1, 4), 1), torch.full((1, 1, 4), 2)
    pl2_a, pl2_b = torch.full((1, 1, 4), 3), torch.full((1, 1, 4), 4)
    t1, t2 = heterogeneous_targets(pl1_a, pl1_b, pl2_a, pl2_b, mask)
    # code: outside the box the OTHER subnet's pseudo-label, inside its own
    assert t1.flatten().tolist() == [3, 3, 2, 2]
    assert t2.flatten().tolist() == [1, 1, 4, 4]
    t1, t2 = heterogeneous_targets(pl1_a, pl1_b, pl2_a, pl2_b, mask, "inside_box")
    assert t1.flatten().tolist() == [1, 1, 4, 4]
    assert t2.flatten().tolist() == [3, 3, 2, 2]
    assert t1.dtype == torch.long


# -- CPS -----------------------------------------------------------------------------------------


def test_cps_loss_uses_the_other_networks_hard_label() -> None:
    z = torch.tensor([[[0.0, 2.0], [1.0, 0.0]]], requires_grad=True)  # B=1, C=2, V=2
    other = torch.tensor([[[3.0, 0.0], [1.0, 2.0]]], requires_grad=True)  # argmax: 0, 1
    loss = cps_loss(z, other)
    expected = (-(0.0 - math.log(1 + math.e)) + -(0.0 - math.log(math.exp(2) + 1))) / 2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert other.grad is None and z.grad is not None


def test_init_and_average() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    with torch.no_grad():
        net[1].weight.fill_(3.0)
    init_conv_weights(net, "xavier")
    assert torch.equal(net[1].weight, torch.ones(2))
    z1, z2 = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    assert average_logits(z1, z2).tolist() == [[1.0, 0.0]]
    probs = torch.softmax(average_logits(z1, z2, "probs"), 1)
    expected = 0.5 * (torch.softmax(z1, 1) + torch.softmax(z2, 1))
    assert torch.allclose(probs, expected)


# -- the two-network methods ---------------------------------------------------------------------


def _cfg(method: str, params: dict, kind: str = "2d", root: Path = Path(".")):
    return tiny_method_config(method, params, kind, root)


def _batch(shape=(32, 32), classes=4):
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, classes, (2, *shape), generator=g)
    image = label.unsqueeze(1).float() + 0.3 * torch.randn(2, 1, *shape, generator=g)
    return {"image": image, "label": label}, {"image": image.flip(0)}


def test_predictor_choice_is_a_saved_buffer() -> None:
    torch.manual_seed(0)
    m = METHODS["alhvr"](_cfg("alhvr", {}))
    assert m.predictor_candidates() == ("net1", "net2")
    x = torch.randn(1, 1, 32, 32)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m.predict(x), m.net1(x))
        m.set_predictor("net2")
        assert torch.equal(m.predict(x), m.net2(x))
    assert int(m.state_dict()["chosen_net"]) == 1
    fresh = METHODS["alhvr"](_cfg("alhvr", {}))
    fresh.load_state_dict(m.state_dict())
    assert fresh.inference_mode == "net2"
    cps = METHODS["cps"](_cfg("cps", {}))
    assert cps.predictor_candidates() == () and cps.inference_mode == "net1"
    cml = METHODS["cml"](_cfg("cml", {}))
    assert cml.inference_mode == "average"


@pytest.mark.parametrize("method,params", [
    ("alhvr", {"dice_factor_two": True, "ce_mode": "per_pixel", "cos_mode": "target_class",
               "renormalize_sharpen": True, "detach_targets": True,
               "entropy_over_region": True, "perturb_labeled": False}),
    ("cml", {"single_subnet": True, "cross_region": "inside_box", "pretrain_iterations": 1,
             "pseudo_label_train_mode": False}),
    ("cps", {"pseudo_on": "all", "init": "default", "predict_mode": "average",
             "average_space": "probs"}),
])
def test_fixed_options_train(method: str, params: dict) -> None:
    torch.manual_seed(0)
    m = METHODS[method](_cfg(method, params))
    opt = torch.optim.SGD(list(m.trainable_parameters()), lr=0.01)
    labeled, unlabeled = _batch()
    m.train()
    for step in range(2):
        out = m.training_step(labeled, unlabeled, step + 2000)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        assert math.isfinite(float(out["loss"].detach()))
    m.eval()
    with torch.no_grad():
        assert m.predict(labeled["image"]).shape == (2, 4, 32, 32)


def test_cml_single_subnet_has_one_network_and_is_2d_only() -> None:
    m = METHODS["cml"](_cfg("cml", {"single_subnet": True}))
    assert not hasattr(m, "net2") or m.second is m.net1
    two = METHODS["cml"](_cfg("cml", {"single_subnet": False}))
    assert METHODS["cml"](_cfg("cml", {})).single  # null = the authors' 2D code
    assert not METHODS["cml"](_cfg("cml", {}, kind="3d")).single  # their 3D code: two subnets
    n_single = sum(p.numel() for p in m.parameters())
    assert sum(p.numel() for p in two.parameters()) > 2 * n_single - 1  # two full subnets
    assert two.net2.decoders[0].up_type == "transpose"
    from ssmis.errors import SSMISError
    with pytest.raises(SSMISError, match="single_subnet"):
        METHODS["cml"](_cfg("cml", {"single_subnet": True}, kind="3d"))


def test_alhvr_3d_uses_block_six_tap() -> None:
    m = METHODS["alhvr"](_cfg("alhvr", {}, kind="3d"))
    assert m.tap == "dec1"
    labeled, unlabeled = _batch((32, 32, 16), 2)
    torch.manual_seed(0)
    out = m.training_step(labeled, unlabeled, 0)
    assert 0 <= float(out["frac_unreliable_stable"]) <= 1
    assert float(out["gamma"]) > 0


# -- engine: validation picks the better network -------------------------------------------------


def test_engine_scores_both_networks(phantom_root: Path, tmp_path: Path) -> None:
    from ssmis.engine.checkpoint import load_weights
    from ssmis.engine.run import train_run

    raw = tiny_config(phantom_root, tmp_path, iterations=2, val_every=2, unlabeled_batch_size=2)
    raw["model"]["options"] = {"widths": [4, 4, 8, 8, 8]}
    raw["method"] = {"name": "alhvr", "params": {}}
    run = train_run(validate_config(raw), run_dir=tmp_path / "run", evaluate=False,
                    verbose=False)
    rows = [json.loads(line) for line in (run / "val.jsonl").read_text().splitlines()]
    row = rows[-1]
    assert row["predictor"] in ("net1", "net2")
    scores = (row["val_dice_net1"], row["val_dice_net2"])
    assert row["val_dice"] == max(scores)
    chosen = int(load_weights(run / "checkpoints" / "best.safetensors")["chosen_net"])
    assert ("net1", "net2")[chosen] == row["predictor"]
