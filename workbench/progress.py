"""Progress bars: tqdm everywhere (notebook widget when interactive, plain text when headless)."""

from __future__ import annotations

import os
import sys

import keras


def headless() -> bool:
    """True under papermill/CI (the CLI sets WORKBENCH_HEADLESS=1): text bars, no widgets."""
    return os.environ.get("WORKBENCH_HEADLESS") == "1"


def tqdm(*args, **kwargs):
    if headless():
        from tqdm import tqdm as _tqdm
        # the kernel's own stderr (the terminal running papermill), not the notebook's captured stream:
        # the user sees the bar live and the shared report is not cluttered with bar frames
        kwargs.setdefault("file", sys.__stderr__ or sys.stderr)
        kwargs.setdefault("mininterval", 5.0)
        kwargs.setdefault("ascii", True)
        return _tqdm(*args, **kwargs)
    from tqdm.auto import tqdm as _tqdm
    return _tqdm(*args, **kwargs)


class TqdmTraining(keras.callbacks.Callback):
    """One bar over all training steps, with the last epoch's metrics as postfix."""

    def __init__(self, epochs: int, steps_per_epoch: int):
        super().__init__()
        self.total = epochs * steps_per_epoch
        self.bar = None

    def on_train_begin(self, logs=None):
        self.bar = tqdm(total=self.total, desc="train", unit="step")

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k in ("loss", "acc", "val_loss", "val_acc")},
                             refresh=False)
        self.bar.set_description(f"epoch {epoch + 1}")
        if headless():  # one readable line per epoch in the executed notebook
            print(f"epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4f}" for k, v in logs.items()), flush=True)

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.close()
