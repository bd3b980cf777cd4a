"""The train notebook records its preprocessing and shows the before/after preview (shared e2e run)."""

import json

import nbformat
import pytest

pytestmark = pytest.mark.slow


def test_preprocessing_is_recorded_and_previewed(pipeline_run):
    d = pipeline_run["dir"]
    spec = json.loads((d / "preprocess.json").read_text())
    assert (spec["version"], spec["denoise"], spec["contrast"], spec["normalize"]) == (1, "none", "none", "none")
    assert json.loads((d / "provenance.json").read_text())["train"]["preprocess"] == spec
    params = json.loads((d / "params/train.json").read_text())
    assert (params["denoise"], params["contrast"], params["normalize"]) == ("none", "none", "none")
    nb = nbformat.read(str(d / "10_train.ipynb"), as_version=4)
    i = next(k for k, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## Preprocessing"))
    preview = nb.cells[i + 2]
    assert "preview_preprocessing" in preview.source
    assert any("image/png" in o.get("data", {}) for o in preview.outputs)
    assert "Preprocessing" in (d / "10_train.html").read_text()
