"""Run-folder logging: JSONL scalars, optional TensorBoard, a log file, and the progress line."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

LOGGER_NAME = "ssmis"
#: ``extra={FILE_ONLY: True}``: a log record the console handler drops (a tqdm bar shows it)
FILE_ONLY = "file_only"


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (``d days h:mm:ss`` past a day); ``?`` for an unknown or infinite time."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = int(round(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days} day{'s' * (days != 1)} {text}" if days else text


def setup_logger(log_file: Path | None, verbose: bool = True) -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = False
    if verbose:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(message)s"))
        # progress lines for the log file only while a progress bar shows them on the terminal
        console.addFilter(lambda record: not getattr(record, FILE_ONLY, False))
        logger.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, mode="a")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return logger


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriter:
    """Append-only JSON-lines file, flushed per row so a crash loses at most one row.
    ``enabled=False`` (DDP ranks other than 0): opens nothing, writes nothing."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self._handle = None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = path.open("a")

    def write(self, row: dict[str, Any]) -> None:
        if self._handle is None:
            return
        self._handle.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def truncate_jsonl(path: Path, max_iter: int) -> None:
    """Drop rows past ``max_iter`` (a resumed run repeats the iterations after its checkpoint)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("iter", 0) <= max_iter]
    from ssmis.atomic import write_text

    write_text(path, "".join(line + "\n" for line in kept))


class TensorBoard:
    """Scalars to TensorBoard when it is installed; silently nothing otherwise."""

    def __init__(self, log_dir: Path, enabled: bool = True) -> None:
        self._writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is an optional extra
            self._writer = None
        else:
            self._writer = SummaryWriter(str(log_dir))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self._writer is None:
            return
        for key, value in scalars.items():
            self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class Progress:
    """A tqdm bar on a terminal; a plain line every ~5% with the rate and the ETA (remaining
    iterations at the mean rate of this session, validations and checkpoints included) in the
    run log, and on the console too when it is not a terminal (CI, nohup). Lines are written
    only where the shown loss was just computed (a log interval's end), never a stale one."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool = True) -> None:
        self.total = total
        self.interactive = enabled and sys.stderr.isatty()
        self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                         disable=not self.interactive, unit="it")
        self._every = max(total // 20, 1)
        self._t0 = time.perf_counter()
        self._start = initial
        self._printed = initial
        self._logger = logging.getLogger(LOGGER_NAME)

    def update(self, step: int, loss: float, lr: float, fresh: bool = True) -> float:
        """Advance to ``step`` (1-based count of finished iterations); returns it/s so far.
        ``fresh``: ``loss`` is the mean of the interval that ends at ``step``."""
        elapsed = time.perf_counter() - self._t0
        rate = (step - self._start) / elapsed if elapsed > 0 else 0.0
        if self.interactive:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        if fresh and (step - self._printed >= self._every or step == self.total):
            self._printed = step
            eta = (self.total - step) / rate if rate > 0 else float("inf")
            self._logger.info(f"iter {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  "
                              f"{rate:.2f} it/s  ETA {format_duration(eta)}",
                              extra={FILE_ONLY: self.interactive})
        return rate

    def close(self) -> None:
        self._bar.close()


class CaseProgress:
    """Progress over a known number of cases (the test evaluation): a tqdm bar on a terminal,
    and a log line (file only while the bar shows) at the start, every ~10 % of the cases or
    ``every_s`` seconds, and at the end: cases done, seconds per case, ETA."""

    def __init__(self, total: int, desc: str, enabled: bool = True,
                 every_s: float = 30.0) -> None:
        self.total = total
        self.desc = desc
        self.enabled = enabled and total > 0
        self.interactive = self.enabled and sys.stderr.isatty()
        self._bar = tqdm(total=total, desc=desc, dynamic_ncols=True, unit="case",
                         disable=not self.interactive)
        self._every = max(total // 10, 1)
        self._every_s = every_s
        self._done = 0
        self._printed = 0
        self._t0 = self._last = time.perf_counter()
        self._logger = logging.getLogger(LOGGER_NAME)
        if self.enabled:
            self._logger.info(f"{desc}: {total} case{'s' * (total != 1)}",
                              extra={FILE_ONLY: self.interactive})

    def advance(self) -> None:
        """One more case finished."""
        self._done += 1
        if not self.enabled:
            return
        self._bar.update(1)
        now = time.perf_counter()
        if (self._done - self._printed >= self._every or now - self._last >= self._every_s
                or self._done == self.total):
            self._printed, self._last = self._done, now
            per_case = (now - self._t0) / self._done
            eta = per_case * max(self.total - self._done, 0)
            self._logger.info(f"{self.desc}: {self._done}/{self.total} cases  "
                              f"{per_case:.2f} s/case  ETA {format_duration(eta)}",
                              extra={FILE_ONLY: self.interactive})

    def close(self) -> None:
        self._bar.close()
