"""The one folder walker: every place that lists the files of a folder (folder pools, the PHI registry of a
DICOM pool, image-folder datasets, DICOM ingest, stage-cache fingerprints, the PHI audit of outputs) lists
them the same way, so that what is annotated is exactly what is searched for identifying values.

Rules:

- **Recursive, following symbolic links** to folders (an export whose patient folders are links is read
  whole), each real folder once: a link back up the tree (a cycle) or two links to one folder never
  list a file twice.
- **Hidden entries skipped** (a file or folder whose name starts with ".": ``.DS_Store``,
  ``.ipynb_checkpoints``, ``.git``) unless ``hidden=True`` (the PHI audit of outputs searches everything).
- **Sorted** by the path relative to the root (POSIX form): the same order on every machine.
- ``suffixes`` keeps only files with one of these suffixes (case-insensitive).

Pure standard library.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator


def iter_files(root, suffixes: Iterable[str] | None = None, hidden: bool = False) -> Iterator[Path]:
    """Files under ``root`` (see the module docstring), yielded folder by folder in sorted order (use
    ``files`` for the fully sorted list)."""
    root = Path(root)
    want = {s.lower() for s in suffixes} if suffixes is not None else None
    seen = {os.path.realpath(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        base = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(base / d)
            if (hidden or not d.startswith(".")) and real not in seen:
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        for fn in sorted(filenames):
            if not hidden and fn.startswith("."):
                continue
            p = base / fn
            if want is not None and p.suffix.lower() not in want:
                continue
            if p.is_file():
                yield p


def files(root, suffixes: Iterable[str] | None = None, hidden: bool = False) -> list[Path]:
    """Every file under ``root``, sorted by its path relative to ``root``."""
    root = Path(root)
    return sorted(iter_files(root, suffixes, hidden), key=lambda p: p.relative_to(root).as_posix())


def relative(root, suffixes: Iterable[str] | None = None, hidden: bool = False) -> list[str]:
    """``files`` as POSIX paths relative to ``root``."""
    root = Path(root)
    return [p.relative_to(root).as_posix() for p in files(root, suffixes, hidden)]
