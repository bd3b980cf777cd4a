"""Progress bars: tqdm everywhere (notebook widget when interactive, plain text when headless).

Headless (papermill), bars go to the kernel process's own stderr, which the headless kernel
(workbench.execute.HEADLESS_KERNEL_NAME) does not copy into the notebook: the terminal running the
stage shows them, the shared HTML report does not. No Keras here (workbench.train has the training bar).
"""

from __future__ import annotations

import os
import sys


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
