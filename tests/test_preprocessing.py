"""quantens.data.preprocessing and `train.py --input-preprocessing`: a model is fed its own inputs.

The formulas on a known image, the default that is today's standardisation
exactly, the rule that tells a model trained on other inputs, and a small CNN
trained here on pixels in [0, 1]: train.py measures it, records the choice
in config.json and export.json, and refuses it (exit 2, nothing trained)
when fed standardised images without the flag.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, run_script

import quantens.data as qd
from quantens import cli, defaults
from quantens.cli import train
from quantens.data.augmentation import normalizer
from quantens.errors import DataError, UsageError

CIFAR = qd.DATASETS["cifar10"]
DIGITS = qd.DATASETS["digits"]
# one image of two RGB pixels, values in [0, 255]
PIXELS = np.array([[[0.0, 127.5, 255.0], [10.0, 20.0, 30.0]]], "float32")


# ------------------------------------------------------------------ formulas


def test_each_preprocessing_gives_its_formula_on_a_known_image():
    by_hand = {
        "none": [[[0, 127.5, 255], [10, 20, 30]]],
        "unit": [[[0, 0.5, 1], [10 / 255, 20 / 255, 30 / 255]]],
        "symmetric": [[[-1, 0, 1], [10 / 127.5 - 1, 20 / 127.5 - 1, 30 / 127.5 - 1]]],
        # RGB -> BGR, minus the BGR means
        "caffe": [[[255 - 103.939, 127.5 - 116.779, 0 - 123.68],
                   [30 - 103.939, 20 - 116.779, 10 - 123.68]]],
        "torch": [[[(0 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (1 - 0.406) / 0.225],
                   [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224,
                    (30 / 255 - 0.406) / 0.225]]],
        "standardized": [[[(0 - 0.4914 * 255) / (0.2470 * 255),
                           (127.5 - 0.4822 * 255) / (0.2435 * 255),
                           (255 - 0.4465 * 255) / (0.2616 * 255)],
                          [(10 - 0.4914 * 255) / (0.2470 * 255),
                           (20 - 0.4822 * 255) / (0.2435 * 255),
                           (30 - 0.4465 * 255) / (0.2616 * 255)]]],
    }
    assert set(by_hand) == set(defaults.INPUT_PREPROCESSINGS)
    for name, expected in by_hand.items():
        function = qd.preprocessing_fn(name, CIFAR)
        np.testing.assert_allclose(function(PIXELS), expected, rtol=1e-6, atol=1e-6,
                                   err_msg=name)
        batch = np.stack([PIXELS, PIXELS[:, ::-1]])  # a batch: the same per image
        np.testing.assert_allclose(function(batch)[1], function(PIXELS[:, ::-1]), rtol=1e-6)
    # the keras.applications modes are keras' own preprocess_input
    for name, mode in (("caffe", "caffe"), ("torch", "torch"), ("symmetric", "tf")):
        keras = tf.keras.applications.imagenet_utils.preprocess_input(PIXELS.copy(), mode=mode)
        np.testing.assert_allclose(qd.preprocessing_fn(name, CIFAR)(PIXELS), keras, rtol=1e-5,
                                   atol=1e-5, err_msg=name)


def test_mean_std_is_the_same_map_for_what_undoes_it():
    """(pixels / 255 - mean) / std (channels reversed for caffe): a teacher's way back."""
    for name in defaults.INPUT_PREPROCESSINGS:
        mean, std, bgr = qd.preprocessing_mean_std(name, CIFAR)
        pixels = PIXELS[..., ::-1] if bgr else PIXELS
        affine = (pixels / 255.0 - np.array(mean)) / np.array(std)
        np.testing.assert_allclose(affine, qd.preprocessing_fn(name, CIFAR)(PIXELS), rtol=1e-5,
                                   atol=1e-4, err_msg=name)


def test_descriptions_say_the_formula_with_numbers():
    assert qd.describe_preprocessing("unit", DIGITS) == "x / 255: pixels in [0, 1]"
    assert qd.describe_preprocessing("standardized", DIGITS).startswith("(x - 77.85) / 95.88")
    assert "(x - [125.31, 122.96, 113.86]) / [62.98, 62.09, 66.71] per channel" in (
        qd.describe_preprocessing("standardized", CIFAR))
    assert "[103.939, 116.779, 123.68]" in qd.describe_preprocessing("caffe", CIFAR)


# ------------------------------------------------------------------ bad names


def test_a_bad_name_and_rgb_modes_on_grayscale_are_one_line_listing_the_choices(tfds_dir):
    with pytest.raises(DataError) as error:
        qd.load("digits", "validation", preprocessing="minmax", data_dir=tfds_dir)
    assert str(error.value) == ("unknown input preprocessing 'minmax': choose one of "
                                "standardized, none, unit, symmetric, caffe, torch")
    for name in qd.RGB_ONLY:
        with pytest.raises(DataError) as error:
            qd.preprocessing_fn(name, DIGITS)
        assert str(error.value) == (
            f"input preprocessing {name} is defined for RGB images; digits images have 1 "
            "channel: choose one of standardized, none, unit, symmetric")
    assert qd.applicable_preprocessings(CIFAR) == defaults.INPUT_PREPROCESSINGS


def test_train_py_refuses_a_bad_name_in_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(["--input-preprocessing", "minmax"])
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--input-preprocessing: invalid choice: 'minmax'" in lines[0]
    assert "'unit'" in lines[0] and "'torch'" in lines[0]
    # an RGB mode on grayscale digits: before anything is written
    result = tmp_path / "result"
    args = cli.parse_args(["--input-preprocessing", "caffe", "--result-path", str(result)])
    with pytest.raises(UsageError, match=r"^--input-preprocessing caffe is defined for RGB "
                       r"images; digits images have 1 channel: choose one of standardized, "
                       r"none, unit, symmetric$"):
        train.run(args)
    assert not result.exists()


# ------------------------------------------------------- the default is today's


def test_standardized_is_the_default_and_todays_normalizer_exactly(tfds_dir):
    assert defaults.INPUT_PREPROCESSING == "standardized"
    standardize = normalizer(DIGITS)
    raw = next(iter(qd.load("digits", "validation", 512, data_dir=tfds_dir,
                            preprocessing="none")))[0]
    assert float(tf.reduce_min(raw)) == 0 and float(tf.reduce_max(raw)) == 255
    default = next(iter(qd.load("digits", "validation", 512, data_dir=tfds_dir)))[0]
    np.testing.assert_array_equal(default, standardize(raw))
    # training batches (augmented, keyed by seed and epoch): bit for bit too
    epoch = tf.Variable(3, dtype=tf.int64)
    kwargs = dict(batch_size=64, training=True, data_dir=tfds_dir, shuffle_seed=7,
                  augmentation="high", epoch=epoch, take_batches=3)
    for (a, ya), (b, yb), (c, _) in zip(
            qd.load("digits", "train", **kwargs),
            qd.load("digits", "train", preprocessing="standardized", **kwargs),
            qd.load("digits", "train", preprocessing="none", **kwargs), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(a, standardize(c))


# ------------------------------------------------------------------ the rule


def test_the_rule_wants_far_more_absolute_and_relative():
    rule = qd.likely_preprocessing
    assert (qd.MISMATCH_MIN_GAIN, qd.MISMATCH_MIN_RATIO) == (0.20, 1.5)
    assert rule({"standardized": 0.348, "unit": 0.816}, "standardized") == "unit"
    assert rule({"standardized": 0.30, "unit": 0.50}, "standardized") == "unit"  # +0.20, 1.67x
    assert rule({"standardized": 0.30, "unit": 0.49}, "standardized") is None  # +0.19
    assert rule({"standardized": 0.50, "unit": 0.74}, "standardized") is None  # +0.24, 1.48x
    assert rule({"standardized": 0.10, "none": 0.20, "unit": 0.95}, "standardized") == "unit"
    assert rule({"unit": 0.95, "standardized": 0.30}, "unit") is None
    assert rule({"unit": 0.95}, "unit") is None


# ------------------------------------------------ a CNN trained on [0, 1] inputs


@pytest.fixture(scope="module")
def unit_cnn(tfds_dir, tmp_path_factory):
    """(path of a saved CNN trained on digits in [0, 1], the model).

    A ReLU6 conv with zero padding and a global max: on standardised images the
    background is -0.81, not the padding's 0, and every border lights up.
    """
    tf.keras.utils.set_random_seed(0)
    x, y = next(iter(qd.load("digits", "train", 4096, data_dir=tfds_dir, preprocessing="unit")))
    model = tf.keras.Sequential([
        tf.keras.layers.Conv2D(16, 5, padding="same", input_shape=(8, 8, 1)),
        tf.keras.layers.ReLU(max_value=6.0),
        tf.keras.layers.GlobalMaxPooling2D(),
        tf.keras.layers.Dense(10),
    ])
    model.compile(tf.keras.optimizers.Adam(0.01),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=10, batch_size=64, verbose=0)
    path = tmp_path_factory.mktemp("user") / "my_cnn.keras"
    model.save(str(path))
    return path, model


def _validation_accuracy(model, tfds_dir, preprocessing):
    """The model's accuracy on train.py's validation split, computed here."""
    plan = qd.plan_splits("digits")
    x, y = next(iter(qd.load("digits", plan.validation, 4096, data_dir=tfds_dir,
                             preprocessing=preprocessing)))
    predicted = np.argmax(model(x, training=False).numpy(), axis=-1)
    return float(np.mean(predicted == y.numpy())), len(y)


def test_check_preprocessing_finds_the_inputs_a_model_was_trained_on(unit_cnn, tfds_dir):
    _, model = unit_cnn
    unit, n = _validation_accuracy(model, tfds_dir, "unit")
    standardized, _ = _validation_accuracy(model, tfds_dir, "standardized")
    assert n == 144 and unit > 0.6 and unit >= standardized + 0.2, (unit, standardized)
    check = qd.check_preprocessing(model, "digits", "validation", data_dir=tfds_dir)
    assert check.stated == "standardized" and check.examples == 144
    assert check.accuracies["unit"] == unit and check.accuracy == standardized
    assert set(check.accuracies) == {"standardized", "none", "unit", "symmetric"}
    assert check.better == "unit"
    assert qd.check_preprocessing(model, "digits", "validation", "unit",
                                  data_dir=tfds_dir).better is None
    # the first max_examples images, the same for each preprocessing
    few = qd.compare_preprocessings(model, "digits", "validation", data_dir=tfds_dir,
                                    batch_size=16, max_examples=40)
    for name, accuracy in few.items():
        x, y = next(iter(qd.load("digits", "validation", 40, data_dir=tfds_dir,
                                 preprocessing=name)))
        correct = np.sum(np.argmax(model(x, training=False).numpy(), axis=-1) == y.numpy())
        assert accuracy == correct / 40, name
    print("accuracy of the [0, 1] CNN on validation:",
          {k: round(v, 4) for k, v in check.accuracies.items()})


def _train(tmp_path, argv):
    return run_script([os.path.join(ROOT, "train.py"), *argv], cwd=str(tmp_path),
                      env={"PYTHONPATH": ROOT})


def _flags(path, tfds_dir, result):
    return ["--model", str(path), "--data-dir", tfds_dir, "--result-path", str(result),
            "--epochs", "1", "--test-run", "--batch-size", "256", "--mode", "imperative",
            "--bit-widths", "32", "8", "--no-tensorboard"]


@pytest.mark.slow
def test_train_py_measures_records_and_exports_the_stated_preprocessing(unit_cnn, tfds_dir,
                                                                        tmp_path):
    path, model = unit_cnn
    result = tmp_path / "unit"
    run = _train(tmp_path, [*_flags(path, tfds_dir, result), "--input-preprocessing", "unit",
                            "--export"])
    assert run.returncode == 0, run.stderr[-3000:]
    unit, _ = _validation_accuracy(model, tfds_dir, "unit")
    line = next(x for x in run.stdout.splitlines() if x.startswith("float model:"))
    assert line.startswith(
        f"float model: validation accuracy {unit:.4f} with --input-preprocessing unit ("), line
    assert "warning:" not in run.stderr
    assert json.loads((result / "config.json").read_text())["input_preprocessing"] == "unit"
    exported = json.loads((result / "export" / "export.json").read_text())
    assert exported["input_preprocessing"] == {"name": "unit",
                                               "description": "x / 255: pixels in [0, 1]"}
    # fed [0, 1] inputs, the members keep the float model's accuracy
    metrics = json.loads((result / "metrics.json").read_text())
    assert metrics["val_accuracy"]["32"] >= unit - 0.1, metrics
    # the finished run read back: its export takes the same inputs
    from quantens.export import export_result_dir

    again = export_result_dir(str(result), str(tmp_path / "again"), max_val_examples=64)
    assert again["input_preprocessing"]["name"] == "unit"
    assert again["members"]["32"]["fidelity"]["keras_accuracy"] > 0.6


@pytest.mark.slow
def test_train_py_refuses_a_model_fed_other_inputs_before_training(unit_cnn, tfds_dir,
                                                                  tmp_path):
    path, model = unit_cnn
    result = tmp_path / "standardized"
    run = _train(tmp_path, _flags(path, tfds_dir, result))
    assert run.returncode == 2, run.stderr[-3000:]
    lines = [x for x in run.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    standardized, _ = _validation_accuracy(model, tfds_dir, "standardized")
    unit, _ = _validation_accuracy(model, tfds_dir, "unit")
    assert lines[0] == (
        f"train.py: error: --model {path}: the float model scores {100 * standardized:.1f} % "
        f"on validation with --input-preprocessing standardized but {100 * unit:.1f} % with "
        "unit: it was trained on other inputs; pass --input-preprocessing unit")
    assert "Epoch" not in run.stdout
    for name in ("history.csv", "ensemble.weights.h5", "best.weights.h5", "config.json"):
        assert not (result / name).exists(), name


def test_an_explicit_preprocessing_is_warned_about_and_trained(unit_cnn, tfds_dir, tmp_path,
                                                              capsys):
    path, _ = unit_cnn
    result = tmp_path / "explicit"
    args = cli.parse_args([*_flags(path, tfds_dir, result), "--bit-widths", "32",
                           "--input-preprocessing", "standardized"])
    train.run(args)
    captured = capsys.readouterr()
    warning = [x for x in captured.err.splitlines() if x.startswith("warning:")]
    assert len(warning) == 1 and warning[0].endswith("the likely fix: --input-preprocessing unit")
    assert "with --input-preprocessing standardized (" in captured.out
    config = json.loads((result / "config.json").read_text())
    assert config["input_preprocessing"] == "standardized"
    assert (result / "history.csv").is_file()


def test_a_keras_applications_teacher_gets_back_the_rgb_pixels_of_any_preprocessing():
    import zoo

    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    for name in ("caffe", "unit"):
        mean, std, bgr = qd.preprocessing_mean_std(name, CIFAR)
        teacher = zoo.create_teacher("ResNet50", (32, 32, 3), 10, None, mean, std, bgr=bgr)
        # what the teacher hands the network: keras' own (caffe) preprocessing of the pixels
        preprocessed = tf.keras.Model(teacher.input, teacher.layers[-2].output)(
            qd.preprocessing_fn(name, CIFAR)(pixels))
        np.testing.assert_allclose(
            preprocessed, tf.keras.applications.imagenet_utils.preprocess_input(
                pixels.copy(), mode="caffe"), atol=1e-3, err_msg=name)


def test_publish_refuses_a_run_trained_on_other_inputs_and_writes_nothing(tmp_path):
    """The registry's tags take standardised images: a run on other inputs is no tag."""
    from quantens.results import write_json
    from zoo.evaluate import publish

    run, weights_dir = tmp_path / "run", tmp_path / "weights"
    run.mkdir()
    write_json(str(run / "config.json"), {
        "model": "digits_resnet_e", "bit_widths": [32, 1], "dataset": "digits",
        "input_shape": [8, 8, 1], "num_classes": 10, "input_preprocessing": "unit"})
    with pytest.raises(ValueError, match="trained with --input-preprocessing unit; the "
                                         "registry's tags take standardized inputs"):
        publish(str(run), "digits_resnet_e", "unit_inputs", command="(a test)",
                weights_dir=str(weights_dir))
    assert not weights_dir.exists()
