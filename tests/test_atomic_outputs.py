"""Outputs are written to a temporary file and renamed: a full disk is one line naming the file,
leaves no partial file under the real name, and a rerun can skip what is complete."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ssmis.atomic import atomic_write, clean_temporary, write_text
from ssmis.cli import main
from ssmis.errors import SSMISError
from tests.test_owndata import _error_line, _write, images_config, make_images

ENOSPC = r"cannot write \(No space left on device\)"


def _full_after(nbytes: int, write: Callable[[Path], None]) -> Callable[[Path], None]:
    """A writer that writes ``nbytes`` bytes, then fails as a full disk does."""

    def full(tmp: Path) -> None:
        Path(tmp).write_bytes(b"x" * nbytes)
        raise OSError(errno.ENOSPC, "No space left on device")

    return full


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_a_full_disk_leaves_nothing_under_the_name_and_names_the_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "mask.nii.gz"
    with pytest.raises(SSMISError, match=rf"^{tmp_path}/sub/mask.nii.gz: {ENOSPC}; no partial "
                                         "file is left$"):
        atomic_write(target, _full_after(10, lambda p: None))
    assert not target.exists() and _leftovers(target.parent) == []
    write_text(target, "old")
    with pytest.raises(SSMISError, match="the previous file is kept"):
        atomic_write(target, _full_after(1, lambda p: None))
    assert target.read_text() == "old" and _leftovers(target.parent) == []


def test_the_temporary_file_keeps_the_ending_and_killed_writes_are_cleaned(tmp_path: Path) -> None:
    seen: list[str] = []
    atomic_write(tmp_path / "a.nii.gz", lambda tmp: (seen.append(tmp.name), tmp.write_text("")))
    assert seen[0].startswith(".a.nii.gz.") and seen[0].endswith(".tmp.nii.gz")
    (tmp_path / ".b.png.xyz.tmp.png").write_bytes(b"half")
    (tmp_path / ".c.safetensors.abc.tmp").write_bytes(b"half")
    assert clean_temporary(tmp_path) == 2 and [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]


def test_nifti_mask_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nibabel as nib

    from ssmis import predict

    ref = nib.Nifti1Image(np.zeros((4, 4, 3), np.float32), np.eye(4))
    real_save = nib.save

    def full(img, filename):
        real_save(img, filename)  # the bytes land, then the disk is full (e.g. on close)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nib, "save", full)
    target = tmp_path / "case.nii.gz"
    with pytest.raises(SSMISError, match=rf"case.nii.gz: {ENOSPC}"):
        predict._write_nifti(target, np.ones((4, 4, 3), np.uint8), ref)
    assert not target.exists() and _leftovers(tmp_path) == []
    monkeypatch.undo()
    predict._write_nifti(target, np.ones((4, 4, 3), np.uint8), ref)
    assert np.asarray(nib.load(str(target)).dataobj).sum() == 48


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("atomic")
    root = make_images(tmp / "images")
    cfg = images_config(root, tmp / "runs")
    cfg["train"].update(iterations=1, val_every=1)
    cfg["model"]["options"] = {"widths": [4, 8, 8, 8, 8]}
    run = tmp / "run"
    assert main(["train", str(_write(tmp, cfg)), "--run-dir", str(run), "--quiet",
                 "--no-eval"]) == 0
    return run, root / "siteA" / "images"


def test_predict_on_a_full_disk_then_rerun_with_skip_existing(
    image_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    run, images = image_run
    preds = tmp_path / "preds"
    real_save = Image.Image.save
    saved: list[str] = []

    def fills_at_the_third(self, fp, *args, **kwargs):
        saved.append(Path(fp).name)
        if len(saved) == 3:  # img0 overlay, img0 mask, then img1's overlay: half, disk full
            Path(fp).write_bytes(b"\x89PNG half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", fills_at_the_third)
    args = ["predict", str(run), str(images), "--out", str(preds), "--overlay", "--quiet"]
    assert main(args) == 2
    line = _error_line(capsys)
    assert line == (f"ssmis: error: {preds / 'img1_overlay.png'}: cannot write (No space left "
                    "on device); no partial file is left")
    monkeypatch.undo()
    assert sorted(p.name for p in preds.iterdir()) == ["img0.png", "img0_overlay.png"]
    assert all(p.stat().st_size > 0 for p in preds.iterdir())
    done = (preds / "img0.png").stat().st_mtime_ns

    assert main(args) == 2  # a plain rerun refuses, pointing at --skip-existing
    assert "img0.png: exists (use --overwrite to replace it, or --skip-existing" in \
        _error_line(capsys)
    assert main([*args, "--skip-existing"]) == 0
    assert "wrote 6 file(s)" in capsys.readouterr().out  # img1..img3, mask + overlay each
    assert (preds / "img0.png").stat().st_mtime_ns == done
    names = sorted(p.name for p in preds.iterdir())
    assert names == sorted(f"img{i}{s}.png" for i in range(4) for s in ("", "_overlay"))
    for i in range(4):
        assert np.asarray(Image.open(preds / f"img{i}.png")).shape == (32, 32)
    assert main([*args, "--skip-existing", "--overwrite"]) == 2
    assert "--overwrite and --skip-existing: choose one" in _error_line(capsys)


def test_splits_reports_and_figures_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    from ssmis.data.splits import Split
    from ssmis.eval import report

    split = Split(labeled=["a"], unlabeled=["b"], val=["c"], test=["d"])
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: _full_after(5, None)(self))
    with pytest.raises(SSMISError, match=rf"splits.json: {ENOSPC}"):
        split.save(tmp_path / "splits.json")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    split.save(tmp_path / "splits.json")
    assert json.loads((tmp_path / "splits.json").read_text())["test"] == ["d"]

    monkeypatch.setattr(Figure, "savefig", lambda self, p, **k: _full_after(5, None)(p))
    scalars = tmp_path / "scalars.jsonl"
    scalars.write_text('{"iter": 1, "loss": 1.0}\n{"iter": 2, "loss": 0.5}\n')
    with pytest.raises(SSMISError, match=rf"curve.png: {ENOSPC}"):
        report.plot_learning_curve(scalars, tmp_path / "curve.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scalars.jsonl", "splits.json"]


def test_atomic_files_get_the_permissions_of_a_plain_write(tmp_path: Path) -> None:
    """mkstemp makes 0600 files: masks, metrics and checkpoints must stay readable by the
    group and others as a plain open() under the umask would make them."""
    import os

    from ssmis.atomic import write_text

    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "metrics.json", "{}")
        assert path.stat().st_mode & 0o777 == 0o644
        path.chmod(0o640)
        write_text(path, "{}\n")  # a rewrite keeps the file's own mode
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
