"""The plain progress lines (non-terminal stderr) show only freshly computed losses."""

from __future__ import annotations

import logging

import pytest

from ssmis.engine.runlog import LOGGER_NAME, Progress


def test_plain_lines_only_at_fresh_losses(caplog: pytest.LogCaptureFixture) -> None:
    progress = Progress(total=20, initial=0, desc="t")
    assert not progress.interactive  # pytest captures stderr
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        for step in range(1, 21):
            progress.update(step, loss=float(step), lr=0.1, fresh=step % 5 == 0)
    progress.close()
    shown = [r.getMessage().split()[1] for r in caplog.records]
    assert shown == ["5/20", "10/20", "15/20", "20/20"]
    assert "loss 15.0000" in caplog.records[2].getMessage()
