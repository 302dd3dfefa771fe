"""A layer kind is its switchable class and one `register_layer` call: a planted kind, end to end.

The test plants a kind quantens has never heard of: `FlatDense`, a user's
float layer (a Dense layer that flattens its input first), its larq form (what
a member holds) and its switchable form, built from `SwitchableKernelLayer`,
plus an export hook, all in this file; one `quantens.registry.register_layer`
call then makes it convert (`quantens.quantize_model`), train (one step of a
`QuantEnsemble`) and export (`quantens.export`: int8 files built through the
planted hook agree with their Keras members). Nothing in quantens is edited
for it. The fixture unregisters it afterwards (`registry.unregister_layer`).
"""

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

import quantens
from quantens import export, registry
from quantens.convert import supported_layers
from quantens.errors import ConfigError, UsageError
from quantens.export.steps import DenseStep, ReshapeStep
from quantens.layers import SwitchableKernelLayer, SwitchableQuantizedVariable

BITS = (32, 8, 2)
L = tf.keras.layers
SHAPE, CLASSES = (6, 6, 1), 4


class FlatDense(L.Dense):
    """A user's float layer: a Dense layer that flattens its input first."""

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        super().build((input_shape[0], int(np.prod(input_shape[1:]))))
        self.input_spec = L.InputSpec(min_ndim=2)

    def call(self, inputs):
        return super().call(tf.reshape(inputs, (-1, self.kernel.shape[0])))

    def compute_output_shape(self, input_shape):
        return tf.TensorShape((input_shape[0], self.units))


class LarqFlatDense(lq.layers.QuantDense, FlatDense):
    """Its larq form, what a member holds (larq has no FlatDense of its own)."""


class QuantFlatDense(SwitchableKernelLayer, LarqFlatDense):
    """Its switchable form: one kernel for every member."""

    fixed_class = LarqFlatDense


HOOK_CALLS = []


def export_flat_dense(layer, build):
    """A reshape to (features,), then the dense step on it."""
    HOOK_CALLS.append(layer.name)
    flat = ReshapeStep(name=f"{layer.name}/flatten", inputs=build.inputs,
                       shape=(int(layer.kernel.shape[0]),))
    return [flat, build.linear(DenseStep, build.kernel(), inputs=[flat.name])]


@pytest.fixture
def planted():
    entry = registry.register_layer(FlatDense, QuantFlatDense, export=export_flat_dense,
                                    role=registry.DENSE)
    try:
        yield entry
    finally:
        registry.unregister_layer(FlatDense)


def float_model(head=None):
    """conv -> BN -> ReLU -> `head` (default: the planted FlatDense)."""
    inputs = tf.keras.Input(SHAPE)
    x = L.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    if head is None:
        return tf.keras.Model(inputs, FlatDense(CLASSES, name="head")(x))
    return tf.keras.Model(inputs, L.Dense(CLASSES, name="head")(L.Flatten(name="flat")(x)))


def data(n, seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, *SHAPE)).astype("float32"),
            rng.integers(0, CLASSES, n).astype("int64"))


def test_the_planted_kind_is_one_register_layer_call_that_every_reader_sees(planted):
    assert planted.kernels == ("kernel_quantizer",)  # from the switchable class
    assert registry.registered_layers()[-1] is planted
    assert registry.layer_entry_for(FlatDense(2)) is planted
    assert registry.member_layer_entry(LarqFlatDense(2)) is planted  # not Dense's row
    assert registry.kernel_layer_names().endswith("FlatDense")
    assert "FlatDense" in supported_layers() and "FlatDense" in export.supported_layers()
    with pytest.raises(UsageError, match="registered already"):
        registry.register_layer(FlatDense, QuantFlatDense, export=export_flat_dense)
    # the test's own class: in the registry, not among quantens' public names
    assert "QuantFlatDense" not in quantens.__all__


def test_unregistered_the_planted_kind_is_refused_again():
    assert registry.layer_entry_for(FlatDense(2)) is None
    assert "FlatDense" not in registry.kernel_layer_names()
    with pytest.raises(ConfigError, match="head"):
        quantens.quantize_model(float_model(), BITS, policy={})
    with pytest.raises(UsageError, match="not a registered layer kind"):
        registry.unregister_layer(FlatDense)


@pytest.mark.trains
def test_the_planted_kind_converts_trains_a_step_and_exports(planted):
    tf.keras.utils.set_random_seed(0)
    model = float_model()
    x, y = data(64, seed=0)
    converted = quantens.quantize_model(model, BITS, policy={})  # every member quantized
    head = converted.get_layer("head")
    assert type(head) is QuantFlatDense and isinstance(head.kernel, SwitchableQuantizedVariable)
    assert [w.name.split("/")[-1] for w in head.trainable_weights] == ["kernel:0", "bias:0"]
    ensemble = quantens.QuantEnsemble(converted, BITS)
    np.testing.assert_allclose(ensemble.member(32)(x), model(x), atol=1e-4)
    assert type(ensemble.member(2).get_layer("head")) is LarqFlatDense

    ensemble.compile(optimizer=tf.keras.optimizers.Adam(1e-2),
                     loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = head.kernel.latent_variable.numpy().copy()
    ensemble.fit(x, y, batch_size=64, epochs=1, verbose=0)  # one step
    assert not np.allclose(head.kernel.latent_variable.numpy(), before)
    assert len([w for w in converted.weights if "head/kernel" in w.name]) == 1  # shared

    # the same member made of built-in kinds (Flatten, then Dense), with the trained weights
    reference = quantens.QuantEnsemble(
        quantens.quantize_model(float_model(head="built-in"), BITS, policy={}), BITS)
    reference.model.set_weights(converted.get_weights())
    x_test, _ = data(32, seed=1)
    keras = {b: ensemble.member(b).predict(x_test, verbose=0) for b in BITS}
    np.testing.assert_allclose(reference.member(2).predict(x_test, verbose=0), keras[2],
                               atol=1e-5)
    assert not np.allclose(keras[2], keras[32], atol=1e-3)  # the members differ
    for b in (8, 2):  # int8 files, built from the member's steps: the planted hook's
        HOOK_CALLS.clear()
        tflite = export.TFLiteRunner(export.convert_member(ensemble, b, calibration_data=x))
        assert HOOK_CALLS == ["head"]
        built_in = export.TFLiteRunner(export.convert_member(reference, b, calibration_data=x))
        assert HOOK_CALLS == ["head"]  # not for the reference's Dense
        # exported as faithfully as the built-in kinds: the same file's arithmetic
        np.testing.assert_allclose(tflite(x_test), built_in(x_test), atol=1e-6)
    tflite = export.TFLiteRunner(export.convert_member(ensemble, 8, calibration_data=x))(x_test)
    assert np.abs(tflite - keras[8]).max() <= 0.1 * np.abs(keras[8]).max()
    assert np.mean(np.argmax(tflite, -1) == np.argmax(keras[8], -1)) >= 0.9
