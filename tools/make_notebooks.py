"""Regenerate the stage notebooks from each stage's cell list (workbench.notebooks; one definition per stage).

    .venv/bin/python tools/make_notebooks.py [STAGE ...]

tests/test_notebooks.py checks that the notebooks on disk are exactly what this writes.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from workbench.notebooks import write_notebooks  # noqa: E402

if __name__ == "__main__":
    for path in write_notebooks(sys.argv[1:] or None):
        print("wrote", path)
