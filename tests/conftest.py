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
    import tensorflow_datasets as tfds

    import quantens.data as qd

    tfds.disable_progress_bar()

    def arrays(split):
        ds = qd.load("digits", split, batch_size=4096, data_dir=tfds_dir)
        x, y = next(iter(ds))
        return x.numpy(), y.numpy()

    return (*arrays("train"), *arrays("test"))


def tiny_model(bit_widths=(32, 8, 4, 2, 1), width=8, **kwargs):
    import zoo

    return zoo.create_model("digits_resnet_e", bit_widths=bit_widths, width=width, **kwargs)


def teacher_model():
    """A tiny float teacher of 8x8x1 inputs and 10 logits (distillation tests)."""
    import tensorflow as tf

    return tf.keras.Sequential([
        tf.keras.layers.Conv2D(4, 3, activation="relu", input_shape=(8, 8, 1)),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(10),
    ], name="teacher")


def batch(seed=0, n=16):
    """(x, y): n seeded normal 8x8x1 inputs and labels 0..9 in turn."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 1)).astype("float32"), (np.arange(n) % 10).astype("int32")


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


MOCK_TRAIN = """
import sys
import train  # selects tf-keras before TensorFlow loads
import tensorflow_datasets as tfds
from absl import logging

logging.set_verbosity(logging.ERROR)  # the mock's own deprecation warnings
with tfds.testing.mock_data(num_examples=4):
    sys.exit(train.main(sys.argv[1:]))
"""


def run_seed_example(n, tmp_path, extra=(), eager=False, **replace):
    """Runs seed example n through train.py under `tfds.testing.mock_data`.

    Flags verbatim except `--epochs 1 --test-run`, `--batch-size 2`, no
    `--gpus 0`, and the `replace`d ones. Runs in `tmp_path/work`, so the
    example's `--result_path ../test_runN/` lands in `tmp_path`.

    `eager=True` adds `--mode imperative` (replacing the example's `--mode`):
    the one step of a test run costs a few seconds eagerly and about 40 s to
    trace for a ResNetE-18 with a teacher; example 1 runs traced in test_train.
    """
    from seed_examples import flags

    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    script = tmp_path / "mock_train.py"
    script.write_text(MOCK_TRAIN)
    if eager:
        replace = {"--mode": None, **replace}
        extra = (*extra, "--mode", "imperative")
    argv = flags(n, **{"--epochs": "1", "--batch-size": "2", **replace})
    result = run_script([str(script), *argv, "--test-run", *extra], cwd=str(work),
                        env={"PYTHONPATH": ROOT})
    return result, tmp_path / f"test_run{n}"


_DOCSTRING_EXAMPLE = "test_docstrings.py::test_docstring_example["


def pytest_terminal_summary(terminalreporter, config):
    """Prints `docstring examples: N run, P passed[, F failed]` (also under pytest-xdist,
    where only the workers collect: counted from the reports)."""
    outcomes = {}  # nodeid -> passed / failed / skipped (a failure in any phase wins)
    for reports in terminalreporter.stats.values():
        for report in reports:
            nodeid = getattr(report, "nodeid", "")
            if _DOCSTRING_EXAMPLE not in nodeid or not hasattr(report, "when"):
                continue
            if report.failed:
                outcomes[nodeid] = "failed"
            elif report.skipped and outcomes.get(nodeid) != "failed":
                outcomes[nodeid] = "skipped"
            elif report.passed and report.when == "call" and nodeid not in outcomes:
                outcomes[nodeid] = "passed"
    if not outcomes:
        return
    counts = {o: list(outcomes.values()).count(o) for o in ("passed", "failed", "skipped")}
    line = f"docstring examples: {len(outcomes)} run, {counts['passed']} passed"
    line += "".join(f", {counts[o]} {o}" for o in ("failed", "skipped") if counts[o])
    terminalreporter.write_line(line)
