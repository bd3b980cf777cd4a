"""Parameters: strict names, strict types, ranges and choices; notebooks declare exactly the dataclasses."""

import ast
import dataclasses
import math
import subprocess
import sys

import papermill
import pytest

from workbench import WorkbenchError, params
from workbench.augment import PRESETS
from workbench.models import MODELS
from workbench.paths import ROOT, notebook_path

STAGES = tuple(params.STAGE_PARAMS)


def _err(stage, name, value) -> str:
    with pytest.raises(WorkbenchError) as ei:
        params.coerce(stage, name, value)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_stages():
    assert STAGES == ("explore", "pretrain", "train", "evaluate", "annotate")


@pytest.mark.parametrize("stage", STAGES)
def test_defaults_validate(stage):
    default = params.STAGE_PARAMS[stage]()
    values = params.to_dict(default)
    for name, value in values.items():
        assert params.coerce(stage, name, value) == value
    assert params.make(stage, values) == default
    assert {"run_dir", "seed"} <= set(values)


def test_params_are_frozen():
    p = params.TrainParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.epochs = 3


@pytest.mark.parametrize("name, text, expected", [
    ("epochs", "3", 3),
    ("epochs", " 12 ", 12),
    ("dropout", "0.5", 0.5),
    ("learning_rate", "1e-3", 0.001),
    ("class_weights", "true", True),
    ("class_weights", "False", False),
    ("class_weights", "yes", True),
    ("class_weights", "0", False),
    ("dataset", "3", "3"),  # str parameters stay strings
    ("model", "resnet18", "resnet18"),
    ("size", "64", 64),
])
def test_coerce_converts_cli_strings(name, text, expected):
    value = params.coerce("train", name, text)
    assert value == expected
    assert type(value) is type(expected)


def test_int_for_float_becomes_float():
    value = params.coerce("train", "dropout", 0)
    assert value == 0.0 and type(value) is float


@pytest.mark.parametrize("name, value, needle", [
    ("epochs", "three", "must be int, got 'three'"),
    ("epochs", "3.0", "must be int"),
    ("epochs", 3.0, "must be int, got float 3.0"),
    ("epochs", True, "must be int, got bool"),
    ("dropout", "half", "must be float"),
    ("class_weights", "maybe", "must be bool"),
    ("class_weights", 1, "must be bool, got int"),
    ("dataset", 5, "must be str, got int"),
])
def test_wrong_type_names_parameter(name, value, needle):
    msg = _err("train", name, value)
    assert f"parameter {name!r}" in msg
    assert needle in msg


@pytest.mark.parametrize("stage, name, value, needle", [
    ("train", "dropout", 0.95, "[0.0, 0.9]"),
    ("train", "epochs", 0, "[1, 1000]"),
    ("train", "width", 2, "[4, 512]"),
    ("train", "seed", -1, "[0, inf]"),
    ("train", "learning_rate", "2.0", "[1e-07, 1.0]"),
    ("annotate", "target_precision", 0.4, "[0.5, 1.0]"),
    ("evaluate", "batch_size", 10_000, "[1, 8192]"),
])
def test_out_of_range_names_parameter(stage, name, value, needle):
    msg = _err(stage, name, value)
    assert f"parameter {name!r}" in msg and "out of range" in msg and needle in msg


@pytest.mark.parametrize("stage, name, value, choices", [
    ("train", "model", "vgg16", MODELS),
    ("train", "augment", "heavy", PRESETS),
    ("annotate", "resize", "zoom", ("", "none", "stretch", "pad", "crop")),
    ("annotate", "on_shift", "ignore", ("review", "accept")),
])
def test_unknown_choice_names_parameter_and_choices(stage, name, value, choices):
    msg = _err(stage, name, value)
    assert f"parameter {name!r} = {value!r} is not one of" in msg
    assert ", ".join(map(str, choices)) in msg


def test_unknown_name_lists_valid_ones():
    msg = _err("evaluate", "epochs", 3)
    assert "unknown parameter 'epochs' for stage evaluate" in msg
    assert "valid: run_dir, seed, batch_size" in msg
    with pytest.raises(WorkbenchError, match="unknown parameter 'epoch'.*epochs"):
        params.make("train", {"epoch": 3})


def test_nan_is_out_of_range():
    with pytest.raises(WorkbenchError, match="learning_rate"):
        params.coerce("train", "learning_rate", "nan")


def test_collect_picks_declared_names_from_namespace():
    namespace = {
        "__name__": "__main__", "np": object(), "In": [], "x": 1,  # notebook globals that are not params
        "run_dir": "runs/x", "seed": 7, "epochs": 2, "model": "resnet18", "dropout": 0,
    }
    p = params.collect("train", namespace)
    assert isinstance(p, params.TrainParams)
    assert (p.run_dir, p.seed, p.epochs, p.model) == ("runs/x", 7, 2, "resnet18")
    assert p.dropout == 0.0 and type(p.dropout) is float
    assert p.width == params.TrainParams().width  # absent -> default
    with pytest.raises(WorkbenchError, match="'epochs'"):
        params.collect("train", {**namespace, "epochs": 0})


def test_help_text_lists_every_parameter():
    text = params.help_text("annotate")
    lines = text.splitlines()
    assert len(lines) == len(params.fields("annotate"))
    assert lines[7].strip().startswith("target_precision (float, default 0.99): auto-accept threshold")
    assert lines[2].strip().startswith("pool (str, default 'test'): the images to annotate")


# --- notebooks declare exactly the dataclass fields ---------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_notebook_parameters_cell_matches_dataclass(stage):
    declared = papermill.inspect_notebook(str(notebook_path(stage)))
    fields = params.fields(stage)
    assert list(declared) == list(fields)
    for name, f in fields.items():
        nb = declared[name]
        assert nb["inferred_type_name"] == f.type, name
        default = ast.literal_eval(nb["default"])
        assert default == f.default and type(default) is type(f.default), name
        if isinstance(default, float):
            assert not math.isnan(default)
        assert nb["help"] == f.metadata["help"], name


def test_choice_names_are_the_registries_and_checking_imports_no_keras():
    """params holds the registries' names so that a check imports neither Keras nor albumentations."""
    assert params.MODEL_NAMES == tuple(MODELS) and params.AUGMENT_PRESETS == tuple(PRESETS)
    code = ("import sys; from workbench import params; params.make('train', {'model': 'resnet18', 'augment': 'light'}); "
            "print(sorted(m for m in ('keras', 'jax', 'albumentations', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_a_name_shared_by_stages_has_one_type_and_one_documented_meaning():
    """A pipeline sends -p NAME to every stage that declares it, so a shared name must mean one thing: `tta` was
    yes/no in train and a number of passes in evaluate (`pipeline -p tta yes` failed in evaluate)."""
    from collections import defaultdict

    from workbench import params
    seen = defaultdict(set)
    for stage in params.STAGE_PARAMS:
        for name, f in params.fields(stage).items():
            seen[name].add((stage, f.type))
    shared = {n: v for n, v in seen.items() if len({s for s, _ in v}) > 1}
    assert set(shared) == set(params.SHARED), "document a new shared name's one meaning in params.SHARED (or rename it)"
    for name, v in shared.items():
        assert len({t for _, t in v}) == 1, f"{name} has two types: {v}"
    assert "tta" in params.fields("train") and "tta" not in params.fields("evaluate")
    from workbench.execute import split_pipeline_overrides
    per_stage = split_pipeline_overrides({"tta": "yes", "tta_passes": "2"})
    assert per_stage["train"]["tta"] == "yes" and per_stage["evaluate"]["tta_passes"] == 2
