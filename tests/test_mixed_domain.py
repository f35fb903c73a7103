"""Mixed-domain SSL (the SynFoC setting) end to end for any method: labeled cases from one
domain only, unlabeled from all, test metrics per domain plus the mean, and the per-domain
table of ``ssmis.eval.report`` (one Dice column per domain, then mean Dice, Jaccard, HD95, ASD)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ssmis.cli import main
from ssmis.eval import report

DOMAINS = ("siteA", "siteB", "siteC")


def _blob(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cy, cx = rng.integers(8, shape[0] - 8, 2)
    r = rng.integers(4, 8)
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def make_domains(root: Path, per_domain: int = 8, seed: int = 0) -> Path:
    """Three domains with different intensity (a domain shift), grey PNGs, lesion = 255."""
    rng = np.random.default_rng(seed)
    for d, domain in enumerate(DOMAINS):
        for sub in ("images", "masks"):
            (root / domain / sub).mkdir(parents=True)
        for i in range(per_domain):
            mask = _blob((32, 32), rng)
            grey = 30 + 40 * d + (100 - 20 * d) * mask + rng.integers(0, 25, mask.shape)
            Image.fromarray(grey.astype(np.uint8)).save(root / domain / "images" / f"im{i}.png")
            Image.fromarray((mask * 255).astype(np.uint8)).save(
                root / domain / "masks" / f"im{i}.png")
    return root


def _config(root: Path, out: Path, method: str) -> dict:
    params = {"pretrain_iterations": 2} if method == "bcp" else {}
    return {
        "name": f"mixed-{method}", "seed": 1, "output_dir": str(out),
        "data": {"layout": "images", "root": str(root), "num_classes": 2,
                 "class_names": {1: "lesion"}, "mask_values": {0: 0, 255: 1},
                 "labeled_domain": "siteA", "labeled_count": 2, "val_count": 2,
                 "test_count": 6, "patch_size": [32, 32]},
        "model": {"name": "unet2d", "options": {"widths": [4, 4, 8, 8, 8]}},
        "method": {"name": method, "params": params},
        "train": {"iterations": 4, "batch_size": 2, "unlabeled_batch_size": 2,
                  "val_every": 2, "threads": 1, "device": "cpu"},
        "eval": {"unit": "voxel", "overlay_cases": 0},
    }


@pytest.mark.parametrize("method", ["supervised", "bcp"])
def test_mixed_domain_per_domain_table(tmp_path: Path, method: str) -> None:
    root = make_domains(tmp_path / "data")
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(root, tmp_path / "runs", method)))
    run = tmp_path / "run"
    assert main(["train", str(cfg_path), "--run-dir", str(run), "--quiet"]) == 0
    split = json.loads((run / "splits.json").read_text())
    assert len(split["labeled"]) == 2
    assert all(c.startswith("siteA/") for c in split["labeled"])
    assert all(c.startswith("siteA/") for c in split["val"])  # no other domain's label is used
    # every other domain's training cases are unlabeled
    assert {c.split("/")[0] for c in split["unlabeled"]} == set(DOMAINS)
    assert {c.split("/")[0] for c in split["test"]} == set(DOMAINS)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["per_domain"]) == set(DOMAINS)
    for stats in metrics["per_domain"].values():
        assert "dice" in stats
    header, row = report._domain_table(metrics)
    assert header[1:4] == [f"{d} Dice (%)" for d in sorted(DOMAINS)]
    assert header[4:] == ["mean Dice (%)", "mean Jaccard (%)", "mean HD95 (voxel, monai)",
                          "mean ASD (voxel)"]
    assert len(row) == len(header)
    # the mean columns are the unweighted mean over domains, not the pooled mean over cases
    domain_dice = [metrics["per_domain"][d]["dice"]["mean"] for d in sorted(DOMAINS)]
    assert metrics["domain_mean"]["dice"]["mean"] == pytest.approx(sum(domain_dice) / 3)
    assert metrics["domain_mean"]["dice"]["n"] == 3
    md = report.metrics_table_markdown(metrics)
    assert "| siteA Dice (%) | siteB Dice (%) | siteC Dice (%) |" in md.replace(
        "Method | ", "")
