import warnings

import numpy as np
import pytest
import tensorflow as tf

import quantens
import zoo


def count(model, kind):
    return [layer for layer in model.layers if type(layer) is kind]


def test_registry_lists_and_rejects_names():
    assert {"resnet18_e1", "resnet34_e1", "digits_resnet_e", "mobilenet_v2",
            "resnet50"} <= set(zoo.list_models())
    assert zoo.list_models("resnet*") == ["resnet18_e1", "resnet34_e1", "resnet50"]
    with pytest.raises(ValueError, match="unknown model 'resnet99'.*resnet18_e1"):
        zoo.create_model("resnet99")


def test_resnet18_e1_has_the_bmxnet_resnet_e1_structure():
    model = zoo.create_model("resnet18_e1", bit_widths=(1,), fp_downsample_sc=True,
                             pool_downsample_sc=True)
    stem = count(model, tf.keras.layers.Conv2D)
    quantized = count(model, quantens.QuantConv2D)
    dense = count(model, tf.keras.layers.Dense)
    # 1 stem conv + 3 full-precision downsampling shortcuts; 16 quantized 3x3; 1 dense
    assert [c.kernel_size for c in stem] == [(7, 7)] + [(1, 1)] * 3
    assert len(quantized) == 16 and all(c.kernel_size == (3, 3) for c in quantized)
    assert len(dense) == 1 and dense[0].units == 1000
    stages = [64] * 4 + [128] * 4 + [256] * 4 + [512] * 4
    assert [c.filters for c in quantized] == stages
    assert [c.strides for c in quantized].count((2, 2)) == 3
    # parameters, counted from the structure by hand
    conv3 = 9 * (3 * 64 * 64 + 64 * 64 + 64 * 128 + 3 * 128 * 128 + 128 * 256
                 + 3 * 256 * 256 + 256 * 512 + 3 * 512 * 512)
    stem_conv, shortcuts = 7 * 7 * 3 * 64, 64 * 128 + 128 * 256 + 256 * 512
    bn = 4 * (64 + sum(stages) + (128 + 256 + 512) + 512)  # stem, blocks, shortcuts, final
    assert model.count_params() == conv3 + stem_conv + shortcuts + bn + 512 * 1000 + 1000
    # output shapes of the stages at 224x224
    adds = [layer.output.shape[1:] for layer in model.layers
            if isinstance(layer, tf.keras.layers.Add)]
    assert adds[3] == (56, 56, 64) and adds[7] == (28, 28, 128)
    assert adds[11] == (14, 14, 256) and adds[15] == (7, 7, 512)
    assert model.output.shape[1:] == (1000,)


def test_shortcut_variants():
    quantized_sc = zoo.create_model("resnet18_e1", input_shape=(32, 32, 3), num_classes=10,
                                    initial_layers="thumbnail", bit_widths=(8, 1))
    assert len(count(quantized_sc, quantens.QuantConv2D)) == 19  # 16 + 3 quantized 1x1
    assert not count(quantized_sc, tf.keras.layers.AvgPool2D)
    pooled = zoo.create_model("resnet18_e1", input_shape=(32, 32, 3), num_classes=10,
                              initial_layers="thumbnail", pool_downsample_sc=True,
                              bit_widths=(8, 1))
    assert len(count(pooled, tf.keras.layers.AvgPool2D)) == 3
    assert [c.strides for c in count(pooled, quantens.QuantConv2D) if c.kernel_size == (1, 1)] \
        == [(1, 1)] * 3


@pytest.mark.parametrize("stem, first_shape", [
    ("imagenet", (16, 16, 64)), ("thumbnail", (64, 64, 64)), ("grouped_stem", (16, 16, 64)),
])
def test_initial_layers(stem, first_shape):
    model = zoo.create_model("resnet18_e1", input_shape=(64, 64, 3), num_classes=10,
                             initial_layers=stem, bit_widths=(1,))
    first_add = next(layer for layer in model.layers if isinstance(layer, tf.keras.layers.Add))
    assert first_add.output.shape[1:] == first_shape
    out = model(np.zeros((1, 64, 64, 3), "float32"))
    assert out.shape == (1, 10)


def test_resnet34_e1_has_32_quantized_convolutions():
    model = zoo.create_model("resnet34_e1", input_shape=(32, 32, 3), num_classes=10,
                             initial_layers="thumbnail", fp_downsample_sc=True, bit_widths=(1,))
    assert len(count(model, quantens.QuantConv2D)) == 32


def test_create_model_from_flags_rebuilds_a_run():
    flags = {"model": "digits_resnet_e", "bit_widths": [8, 2], "width": 8,
             "activation_method": "det_sign", "fp_weights": True}
    model = zoo.create_model_from_flags(flags, (8, 8, 1), 10)
    conv = count(model, quantens.QuantConv2D)[0]
    assert conv.kernel_quantizer.method == "identity"
    assert conv.input_quantizer.method == "det_sign"
    assert conv.filters == 8


def test_resnet_e_models_of_the_defaults_are_the_zoos():
    """quantens.defaults.RESNET_E_MODELS (TF-free, for the tuner) names the zoo's ResNetE builders."""
    from quantens import defaults

    assert set(defaults.RESNET_E_MODELS) == {
        name for name in zoo.list_models() if zoo.get_builder(name).__module__ == "zoo.resnet_e"}


def test_registering_a_model_name_twice_warns_naming_both_builders():
    from zoo import registry

    def zoo_test_duplicate(**kwargs):
        return "first"

    def second(**kwargs):
        return "second"

    second.__name__ = "zoo_test_duplicate"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            zoo.register_model(zoo_test_duplicate)  # a new name: no warning
            zoo.register_model(zoo_test_duplicate)  # the same function again: no news
        with pytest.warns(UserWarning, match="'zoo_test_duplicate' is registered twice") as caught:
            zoo.register_model(second)
        message = str(caught[0].message)
        assert message.count("test_zoo.zoo_test_duplicate") == 2  # both places, with their lines
        assert message.count("test_zoo.py:") == 2
        assert zoo.get_builder("zoo_test_duplicate")() == "second"  # the later one wins
    finally:
        registry._MODELS.pop("zoo_test_duplicate", None)


def test_registering_a_teacher_name_twice_warns():
    from zoo import registry

    def ResNet18_v1(**kwargs):  # noqa: N802  (the name of a zoo teacher)
        return None

    original = registry.teacher_builder("ResNet18_v1")
    try:
        with pytest.warns(UserWarning, match=r"teacher 'ResNet18_v1' is registered twice: "
                                              r"zoo\.resnet\.ResNet18_v1 .* is replaced by "):
            zoo.register_teacher(ResNet18_v1)
    finally:
        registry._TEACHERS["ResNet18_v1"] = original


def test_the_zoo_package_re_exports_the_registry_and_the_factory():
    from zoo import factory, registry

    for module in (registry, factory):
        for name in module.__all__:
            assert getattr(zoo, name) is getattr(module, name), name
