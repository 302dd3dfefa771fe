"""What the docs claim of train.py flags that no other test checks (issue 31)."""

import os

import pytest
import tensorflow as tf

import quantens
from quantens.quantizers import ClipActivation, default_clip_value

pytestmark = pytest.mark.trains  # trains or traces whole models: not in `make test-fast`

L = tf.keras.layers


def _clip_values(model, bits):
    """{(layer, member): α} of every ClipActivation of `model` at its members `bits`."""
    return {(layer.name, b): float(layer.quantizer.clip_variable(b).numpy())
            for layer in model.layers if isinstance(getattr(layer, "quantizer", None),
                                                    ClipActivation)
            for b in bits}


def test_calibration_none_leaves_the_clip_values_where_conversion_put_them(tfds_dir, tmp_path):
    """docs/converting.md: `train.py --model ...` calibrates each member's clip values
    before the first epoch (`--calibration mse|percentile|none`); with `none` they stay
    at `default_clip_value` (ReLU6: [0, 6] at 4 bits, [0, 2] at 2 bits). One step at
    lr 1e-9 (a step that moves nothing) of a saved float model; the same run with
    `mse` moves every clip value away from its default (measured: by 33-85%)."""
    from quantens import results
    from quantens.cli import train as train_cli

    tf.keras.utils.set_random_seed(0)
    path = str(tmp_path / "float.keras")
    tf.keras.Sequential([
        tf.keras.Input((8, 8, 1)),
        L.Conv2D(8, 3, name="c1"), L.ReLU(6.0, name="c1_relu"),
        L.Conv2D(8, 3, name="c2"), L.ReLU(6.0, name="c2_relu"),
        L.GlobalAveragePooling2D(), L.Dense(10, name="logits"),
    ]).save(path)
    bits = (32, 4, 2)
    clips = {}
    for method in ("none", "mse"):
        out = str(tmp_path / method)
        assert train_cli.main([
            "--model", path, "--calibration", method, "--bit-widths", *map(str, bits),
            "--epochs", "1", "--test-run", "--optimizer", "sgd", "--lr", "1e-9",
            "--no-float-teacher", "--no-tensorboard", "--data-dir", tfds_dir,
            "--result-path", out]) == 0
        model = quantens.quantize_model(tf.keras.models.load_model(path), bits)
        results.load_weights(model, os.path.join(out, "ensemble.weights.h5"))
        clips[method] = _clip_values(model, (4, 2))
    defaults = {(name, b): default_clip_value(b, cap=6.0) for name, b in clips["none"]}
    assert sorted(defaults) == [("c1_relu", 2), ("c1_relu", 4), ("c2_relu", 2), ("c2_relu", 4)]
    assert defaults[("c1_relu", 4)] == 6.0 and defaults[("c1_relu", 2)] == 2.0
    for key, value in defaults.items():
        assert clips["none"][key] == pytest.approx(value, rel=1e-6), key
        # calibrated: the run would show it
        assert abs(clips["mse"][key] - value) > 0.05 * value, (key, clips["mse"][key])
