"""Names of the files and folders in a run folder (no heavy imports: the CLI's compare reads
them without torch)."""

from __future__ import annotations

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "splits.json"
CKPT_DIR = "checkpoints"
#: the run's training sessions: start/end iteration, overrides given, lr rule (engine/resume.py)
SEGMENTS_FILE = "segments.json"
#: the checkpoint the run selected on validation (``eval.selection``); test and predict use it
SELECTED = "best"


def result_stem(split: str, checkpoint: str) -> str:
    """File stem of an evaluation: ``metrics`` for the run's own result (test split, selected
    checkpoint); ``metrics_<split>_<checkpoint>`` for every other pair, so that evaluating
    another checkpoint or split never overwrites the run's result."""
    if (split, checkpoint) == ("test", SELECTED):
        return "metrics"
    return f"metrics_{split}_{checkpoint}"
