"""Shared fixtures: quiet TensorFlow, a private TFDS directory, tiny models."""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import quantens  # noqa: E402,F401  (tf-keras before TensorFlow)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """A TFDS data directory of this test session (digits prepared on first use)."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


@pytest.fixture(scope="session")
def digits_arrays(tfds_dir):
    """(x_train, y_train, x_test, y_test) of `digits`, normalised, as numpy."""
    import quantens.data as qd

    def arrays(split):
        ds = qd.load("digits", split, batch_size=4096, data_dir=tfds_dir)
        x, y = next(iter(ds))
        return x.numpy(), y.numpy()

    return (*arrays("train"), *arrays("test"))


def tiny_model(bit_widths=(32, 8, 4, 2, 1), width=8, **kwargs):
    import zoo

    return zoo.create_model("digits_resnet_e", bit_widths=bit_widths, width=width, **kwargs)


def run_script(args, cwd=ROOT, env=None, timeout=600):
    """Runs a script of the project as a user would; returns the CompletedProcess."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )


@pytest.fixture
def rng():
    return np.random.default_rng(0)
