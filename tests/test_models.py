"""Model registry: output shape, pinned parameter counts, .keras round-trip, one fit step, ResNet stem."""

from pathlib import Path

import numpy as np
import pytest

from workbench import WorkbenchError, models  # first: importing workbench selects the JAX backend

import keras  # noqa: E402,I001

TINY = Path(__file__).resolve().parent / "fixtures" / "bloodmnist_tiny.npz"
NAMES = tuple(models.MODELS)
# narrow models keep the suite fast; width 16 (the cnn default) lets JAX reuse the compiled weight
# initialisers across the tests (initialisation is compiled once per weight shape and dominates build time)
TINY_HP = {"width": 16}


@pytest.fixture(scope="module")
def batch():
    """Eight real BloodMNIST images (raw 0-255 floats, as the models take them) and their labels."""
    with np.load(TINY, allow_pickle=False) as z:
        return z["train_images"][:8].astype("float32"), z["train_labels"][:8].reshape(-1).astype("int64")


@pytest.fixture(scope="module", params=NAMES)
def tiny_model(request):
    keras.utils.set_random_seed(0)
    return request.param, models.build(request.param, (28, 28, 3), 8, **TINY_HP)


def test_registry():
    assert NAMES == ("cnn", "resnet18")


def test_output_is_a_probability_per_class(tiny_model, batch):
    name, model = tiny_model
    x, _ = batch
    probs = model.predict(x, verbose=0)
    assert model.name == name
    assert probs.shape == (8, 8)
    assert probs.dtype == np.float32
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_keras_round_trip_gives_same_predictions(tiny_model, batch, tmp_path):
    name, model = tiny_model
    x, _ = batch
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = models.load(path)
    assert loaded.count_params() == model.count_params()
    assert [w.shape for w in loaded.weights] == [w.shape for w in model.weights]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_one_fit_step_changes_weights(name, batch):
    x, y = batch
    keras.utils.set_random_seed(1)
    model = models.build(name, (28, 28, 3), 8, **TINY_HP)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss="sparse_categorical_crossentropy")
    before = [np.array(w) for w in model.trainable_weights]
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    after = [np.array(w) for w in model.trainable_weights]
    assert model.optimizer.iterations.numpy() == 1
    assert np.isfinite(history.history["loss"][0])
    changed = [not np.array_equal(a, b) for a, b in zip(before, after)]
    assert all(changed), [w.path for w, c in zip(model.trainable_weights, changed) if not c]


# pinned at the builders' default hyperparameters, input (28, 28, 3), 8 classes
PINNED = {
    ("cnn", ()): 73_272,             # width 16: 3 stages of 2 conv3x3-BN (16, 32, 64) + dense
    ("resnet18", ()): 11_182_536,    # 11,172,936 trainable + 9,600 BN moving statistics
}


@pytest.mark.parametrize("name, hp", list(PINNED))
def test_pinned_parameter_count(name, hp):
    model = models.build(name, (28, 28, 3), 8, **dict(hp))
    assert model.count_params() == PINNED[(name, hp)]
    if name == "resnet18":
        # the PyTorch ResNet-18 of the MedMNIST baselines (3x3 stem, 8 classes) has 11,172,936 parameters
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        assert trainable == 11_172_936


@pytest.mark.parametrize("size, stride, spatial", [(28, None, 28), (64, None, 32), (64, 1, 64), (28, 2, 14)])
def test_resnet18_stem_stride(size, stride, spatial):
    model = models.build("resnet18", (size, size, 3), 8, stem_stride=stride, **TINY_HP)
    assert tuple(model.get_layer("stem_conv").output.shape) == (None, spatial, spatial, 16)
    assert model.output.shape == (None, 8)


def test_unknown_model_lists_models():
    with pytest.raises(WorkbenchError) as ei:
        models.build("vgg16", (28, 28, 3), 8)
    msg = str(ei.value)
    assert "'vgg16'" in msg and "parameter 'model'" in msg and "cnn, resnet18" in msg


def test_load_corrupt_model_file(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"not a keras archive")
    with pytest.raises(WorkbenchError) as ei:
        models.load(path)
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(path) in msg and "re-run the train stage" in msg


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [8, 32, 100, 256, 512])
def test_stride_schedule_follows_the_input_size(name, size):
    """Any square size from 8 to 1024 px: the last feature map stays small (≤ 8 px) and the networks at
    28 and 64 px are those of earlier releases (same parameter count as at 28 px)."""
    keras.utils.set_random_seed(0)
    model = models.build(name, (size, size, 1), 30, width=4)
    maps = [layer.output.shape for layer in model.layers if len(getattr(layer.output, "shape", ())) == 4]
    assert 1 <= maps[-1][1] <= 8
    assert model.output_shape == (None, 30)
    if size <= 64:
        assert model.count_params() == models.build(name, (28, 28, 1), 30, width=4).count_params()
    with pytest.raises(WorkbenchError, match="square images of 8-1024 px"):
        models.build(name, (size, size + 1, 1), 2)
