"""Project paths (no I/O at import time)."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]          # workbench/core/paths.py -> the checkout
DATA_DIR = ROOT / "data"
CARDS_DIR = ROOT / "data_cards"
NOTEBOOKS_DIR = ROOT / "notebooks"
RUNS_DIR = ROOT / "runs"

STAGES = {"explore": "00_explore", "pretrain": "05_pretrain", "train": "10_train", "evaluate": "20_evaluate",
          "annotate": "30_annotate"}


def notebook_path(stage: str) -> Path:
    return NOTEBOOKS_DIR / f"{STAGES[stage]}.ipynb"


def runs_root() -> Path:
    """Where new run directories go: $WORKBENCH_RUNS_DIR if set, else runs/ in the project."""
    env = os.environ.get("WORKBENCH_RUNS_DIR")
    return Path(env).expanduser().resolve() if env else RUNS_DIR
