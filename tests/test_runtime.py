"""Importing workbench selects Keras' JAX backend, and refuses any other (fresh interpreters)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, **env_overrides) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_import_selects_jax_without_keras_backend_env():
    proc = _python("import os, workbench, keras; print(keras.backend.backend()); print(os.environ['KERAS_BACKEND'])")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["jax", "jax"]


def test_other_backend_in_env_is_refused():
    proc = _python("import workbench", KERAS_BACKEND="torch")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:")
    assert "KERAS_BACKEND='torch'" in last and "KERAS_BACKEND=jax" in last


def test_refusal_happens_before_keras_is_imported():
    code = ("import sys\ntry:\n    import workbench\nexcept ImportError:\n    print('refused')\n"
            "print('keras' in sys.modules)")
    proc = _python(code, KERAS_BACKEND="torch")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["refused", "False"]


def test_keras_imported_first_with_other_backend_is_refused():
    code = ("import os; os.environ['KERAS_BACKEND'] = 'numpy'; import keras; "
            "os.environ['KERAS_BACKEND'] = 'jax'; import workbench")
    proc = _python(code)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:") and "'numpy' backend before workbench" in last
