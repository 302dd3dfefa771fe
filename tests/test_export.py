"""`python -m quantens.export`: every member on its own (SavedModel, TFLite, LCE).

One small ensemble (`digits_resnet_e` at its default width 32, 32 8 4 2 1
bits) is trained for 4 epochs (92 steps), written as a result directory and
exported once through the command line; the tests read what it wrote.
"""

import json
import os

import numpy as np
import pytest
from conftest import run_script, tiny_model

import quantens
from quantens import export

pytestmark = pytest.mark.slow  # end-to-end runs; `make test-fast` leaves them out

BITS = (32, 8, 4, 2, 1)
EPOCHS = 4

# Bounds, on the validation split, and why:
# - float32 and LCE files compute what the member computes in float32, in another
#   order (BN folded by the converter, popcounts in LCE): rounding differences of
#   ~1e-6 on logits of size ~10. The float32 member has no thresholds: its logits
#   agree to 1e-4. The 1-bit member flips an activation where its input lies
#   within that rounding of the threshold 0.5; such an image (one of 359 here,
#   max |logit difference| 0.1; up to 2 over 8 seeds) differs beyond 1e-4.
#   Agreement is total, and at most 1% of the images may differ beyond 1e-4 (`test_one_bit_rewrite_is_exact`
#   checks that exactly the images with such a near-tie do).
FLOAT_LOGIT_BOUND = 1e-4
LCE_MAX_DIFFERING = 0.01
# - int8 files are exact on the member's grid (quantized convs' weights and
#   inputs) but must round to 8 bits everything else: the input, the
#   full-precision weights (stem, shortcut convs, classifier) and the tensors
#   between grids (BN outputs, residual sums, pooled features, logits), each by
#   at most half a step (range / 255). A k-bit activation flips where such an
#   error crosses one of its thresholds, changing a conv input by 1/(2^k - 1).
#   Over 8 seeds (`benchmarks/bench_fidelity.py --widths 32 --seeds 0 1 2 3 4 5 6 7`)
#   this model's int8 files agreed with their members on >= 99.16% of the 359
#   test images (at most 3 differ, at 2 bits; >= 99.44% at 8 and 4 bits), with
#   accuracy within 0.3 points and logits within a quarter of the Keras logits'
#   spread (max - min). Hence >= 99%. (Narrower models are more fragile: at
#   width 8 the 2-bit file agrees on 96.7-98.6% after 4 epochs.)
INT8_MIN_AGREEMENT = 0.99
INT8_LOGIT_FRACTION = 0.25


@pytest.fixture(scope="module")
def trained(digits_arrays, tfds_dir, tmp_path_factory):
    """A trained ensemble and its result directory (config.json, ensemble.weights.h5)."""
    import tensorflow as tf

    from quantens.results import save_weights, write_json

    x_train, y_train, _, _ = digits_arrays
    tf.keras.utils.set_random_seed(0)
    model = tiny_model(BITS, width=32)
    ensemble = quantens.QuantEnsemble(model, BITS, target_bits=1)
    steps = EPOCHS * -(-len(x_train) // 64)
    ensemble.compile(optimizer=tf.keras.optimizers.Adam(
        tf.keras.optimizers.schedules.CosineDecay(0.005, steps)))
    ensemble.fit(x_train, y_train, batch_size=64, epochs=EPOCHS, verbose=0)
    result_dir = str(tmp_path_factory.mktemp("run"))
    config = {
        "model": "digits_resnet_e", "width": 32, "bit_widths": list(BITS), "target_bits": 1,
        "dataset": "digits", "data_dir": tfds_dir, "batch_size": 64,
        "input_shape": [8, 8, 1], "num_classes": 10,
    }
    write_json(os.path.join(result_dir, "config.json"), config)
    save_weights(model, os.path.join(result_dir, "ensemble.weights.h5"))
    return ensemble, result_dir


@pytest.fixture(scope="module")
def exported(trained):
    """The result directory exported by `python -m quantens.export` and its export.json."""
    ensemble, result_dir = trained
    result = run_script(["-m", "quantens.export", result_dir])
    assert result.returncode == 0, result.stderr[-3000:]
    export_dir = os.path.join(result_dir, "export")
    with open(os.path.join(export_dir, "export.json")) as f:
        report = json.load(f)
    print(result.stdout)  # the table, shown with pytest -s
    return ensemble, export_dir, report


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_export_writes_one_file_per_member_and_the_report(exported):
    ensemble, export_dir, report = exported
    assert sorted(os.listdir(export_dir)) == sorted(
        ["saved_model", "export.json", *(f"member_{b}.tflite" for b in BITS)])
    assert report["bit_widths"] == list(BITS) and report["target_bits"] == 1
    formats = {b: report["members"][str(b)]["format"] for b in BITS}
    assert formats == {32: "float32", 8: "int8", 4: "int8", 2: "int8", 1: "lce"}
    for b in BITS:
        entry = report["members"][str(b)]
        path = os.path.join(export_dir, entry["file"])
        assert entry["bytes"] == os.path.getsize(path)
        assert entry["ops"] == export.op_counts(_read(path))
        assert entry["fidelity"]["examples"] == 359  # the digits test split
    # no temporary directories left beside export/
    assert not [n for n in os.listdir(os.path.dirname(export_dir))
                if n.startswith(".") and n != ".lock"]


def test_every_member_file_agrees_with_its_keras_member(exported):
    _, _, report = exported
    for b in BITS:
        fid = report["members"][str(b)]["fidelity"]
        low, high = fid["keras_logit_range"]
        if report["members"][str(b)]["format"] == "int8":
            assert fid["agreement"] >= INT8_MIN_AGREEMENT, (b, fid)
            assert fid["max_abs_logit_diff"] <= INT8_LOGIT_FRACTION * (high - low), (b, fid)
            assert abs(fid["tflite_accuracy"] - fid["keras_accuracy"]) <= 0.02, (b, fid)
        elif b == 32:
            assert fid["agreement"] == 1.0, (b, fid)
            assert fid["max_abs_logit_diff"] <= FLOAT_LOGIT_BOUND, (b, fid)
            assert fid["differing_examples"] == 0
        else:
            assert fid["agreement"] == 1.0, (b, fid)
            assert fid["differing_examples"] <= LCE_MAX_DIFFERING * fid["examples"], (b, fid)
            assert fid["mean_abs_logit_diff"] <= FLOAT_LOGIT_BOUND * 10, (b, fid)
        if b in (32, 1):
            assert fid["tflite_accuracy"] == fid["keras_accuracy"]
    assert report["members"]["1"]["fidelity"]["interpreter"] == "larq_compute_engine"


def test_one_bit_file_uses_bitpacked_binary_convolutions(exported, trained):
    ensemble, export_dir, report = exported
    ops = export.op_counts(_read(os.path.join(export_dir, "member_1.tflite")))
    quantized_convs = sum(isinstance(layer, quantens.QuantConv2D) for layer in ensemble.model.layers)
    assert ops.get("LceBconv2d") == quantized_convs == 6
    # only the full-precision stem and shortcut convolutions stay float
    assert ops.get("CONV_2D") == 3
    # ... as float32 ops with float32 filters: int8 would round full-precision weights
    lce = report["members"]["1"]["lce"]
    assert lce["int8"] == "exact" and lce["int8_layers"] == []
    assert lce["weight_ops"] == {"CONV_2D float32/float32": 3,
                                 "FULLY_CONNECTED float32/float32": 1,
                                 "LceBconv2d binary/binary": 6}


def test_one_bit_file_with_int8_ops_agrees_with_its_member_as_an_int8_file_does(
        trained, digits_arrays):
    """lce_int8="full": the stem, shortcut and classifier as int8 ops on calibrated
    ranges, beside the binary convolutions. Rounding the input and the residual stream
    to 8 bits moves some inputs of 1-bit activations across their threshold, as in the
    int8 files: 4 of the 359 test images changed their prediction (98.9%), so >= 97%."""
    ensemble, _ = trained
    x_train, _, x_test, y_test = digits_arrays
    member = ensemble.member(1)
    flatbuffer, fmt, details = export.convert(member, 1, x_train, lce_int8="full")
    assert fmt == "lce" and details["lce"]["int8"] == "full"
    assert details["lce"]["weight_ops"] == {"CONV_2D int8/int8": 3,
                                            "DEPTHWISE_CONV_2D int8/int8": 1,  # the last BN
                                            "FULLY_CONNECTED int8/int8": 1,
                                            "LceBconv2d binary/binary": 6}
    fid = export.fidelity(member, flatbuffer, (x_test, y_test))
    print("full int8 LCE file:", len(flatbuffer), "bytes,", fid)
    assert fid["agreement"] >= 0.97, fid
    assert abs(fid["tflite_accuracy"] - fid["keras_accuracy"]) <= 0.02, fid


def test_int8_files_hold_the_members_grid(exported):
    """Conv weights are int8 with at most 2^k levels per output channel; the
    quantized convolutions' inputs are int8 on the grid i/n (scale 1/n, zero
    point -128) and their weights the odd integers 2i - n (for k <= 7)."""
    _, export_dir, _ = exported
    for b in (8, 4, 2):
        n = 2**b - 1
        flatbuffer = _read(os.path.join(export_dir, f"member_{b}.tflite"))
        convs = [c for c in export.int8_conv_weights(flatbuffer) if c["op"] == "CONV_2D"]
        # every conv is int8, full-precision ones (stem, shortcuts) too
        assert len(convs) == export.op_counts(flatbuffer)["CONV_2D"]
        grid_convs = 0
        for conv in convs:
            weights = conv["weights"]
            if conv["input_zero_point"] == -128 and np.isclose(conv["input_scale"], 1.0 / n,
                                                               rtol=1e-6):
                grid_convs += 1
                per_channel = weights.reshape(weights.shape[0], -1)
                assert max(len(np.unique(row)) for row in per_channel) <= 2**b
                if b <= 7:
                    assert np.all(np.abs(weights) <= n) and np.all(weights % 2 == 1)
        assert grid_convs == 6, b


def test_file_size_falls_from_32_to_8_to_1_bits(exported):
    _, export_dir, report = exported
    sizes = {b: os.path.getsize(os.path.join(export_dir, f"member_{b}.tflite")) for b in BITS}
    print("bytes per member:", sizes)
    assert sizes[32] > sizes[8] > sizes[1]
    assert sizes[8] < sizes[32] / 2
    # DoReFa's 2-bit grid (odd integers -3 ... 3) is stored as packed INT4; 4 bits
    # (up to +-15) and 8 bits stay int8
    assert sizes[2] <= 0.6 * sizes[8] and sizes[4] == sizes[8]
    storage = {b: report["members"][str(b)]["weights_storage"] for b in (8, 4, 2)}
    assert storage[2]["int4_tensors"] == 6 and storage[4]["int4_tensors"] == 0
    assert "INT4 holds -8 ... 7" in " ".join(storage[4]["int8_reasons"].values())


def test_packed_2_bit_file_equals_its_int8_twin_on_the_test_split(exported, trained,
                                                                   digits_arrays):
    """Same integers and scales, two per byte: identical outputs with the builtin
    kernels; the INT4 filters read back hold at most 4 levels per channel."""
    ensemble, export_dir, _ = exported
    x_train, _, x_test, _ = digits_arrays
    packed = _read(os.path.join(export_dir, "member_2.tflite"))
    twin = export.convert_member(ensemble, 2, x_train, pack_int4=False)
    np.testing.assert_array_equal(export.TFLiteRunner(packed, use_xnnpack=False)(x_test),
                                  export.TFLiteRunner(twin, use_xnnpack=False)(x_test))
    int4 = [c for c in export.int8_conv_weights(packed) if c["storage"] == "int4"]
    assert len(int4) == 6
    for conv in int4:
        rows = conv["weights"].reshape(conv["weights"].shape[0], -1)
        assert max(len(np.unique(r)) for r in rows) <= 4
        assert np.all(np.abs(rows) <= 3) and np.all(rows % 2 == 1)


def test_saved_model_has_a_signature_per_member_over_shared_weights(exported, digits_arrays):
    import tensorflow as tf

    ensemble, export_dir, report = exported
    path = os.path.join(export_dir, "saved_model")
    loaded = tf.saved_model.load(path)
    expected = {f"serving_bits_{b}" for b in BITS} | {"serving_default"}
    assert set(loaded.signatures) == expected
    x = digits_arrays[2][:64]
    for b in BITS:
        logits = loaded.signatures[f"serving_bits_{b}"](images=x)["logits"].numpy()
        # the Keras member as Keras runs it (a traced graph)
        keras_logits = ensemble.member(b).predict(x, verbose=0)
        np.testing.assert_allclose(logits, keras_logits, atol=1e-5)
    default = loaded.signatures["serving_default"](images=x)["logits"].numpy()
    np.testing.assert_allclose(default, ensemble.member(1).predict(x, verbose=0), atol=1e-5)
    # the shared weights once: as many variables as the inner model has
    stored = [name for name, _ in tf.train.list_variables(os.path.join(path, "variables",
                                                                       "variables"))
              if name != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert len(stored) == len(ensemble.model.weights) == report["saved_model"]["variables"]


def test_one_bit_rewrite_is_exact(trained, digits_arrays):
    """conv(x, w) for x in {0, 1} equals (sum(w) - conv(1 - 2x, w)) / 2, with the
    zero padding of x as padding with 1: the graph LCE converts is the member.

    Both compute in float32 in different orders; the only images whose logits
    may differ beyond 1e-5 are those where a binary activation's input lies
    within float32 rounding of the threshold 0.5 (then either side is right)."""
    ensemble, _ = trained
    member = ensemble.member(1)
    x = digits_arrays[2]
    graph = export.MemberGraph(member, 1)
    diff = np.abs(graph.forward(x, "lce").numpy() - member(x).numpy()).max(axis=-1)
    differing = set(np.flatnonzero(diff > 1e-5))
    taps = {}
    graph.forward(x, "float", taps=taps)
    binarized = set(graph.quantized_conv_inputs())
    assert binarized and binarized <= set(taps)
    near_tie = np.zeros(len(x), bool)
    for name in binarized:
        distance = np.abs(taps[name].numpy() - 0.5).reshape(len(x), -1).min(axis=-1)
        near_tie |= distance < 1e-5
    assert differing <= set(np.flatnonzero(near_tie)), (differing, diff[list(differing)])
    assert near_tie.mean() < 0.05  # (12 of 359 here; 1 of them differs)


def test_failed_export_leaves_the_old_export_and_no_temporary_files(trained, tmp_path):
    ensemble, _ = trained
    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("previous export")
    with pytest.raises(export.ExportError, match="calibration_data"):
        export.export_ensemble(ensemble, str(out), calibration_data=None)
    assert os.listdir(out) == ["old.txt"]
    assert sorted(os.listdir(tmp_path)) == ["export"]


def _result_dir_copy(result_dir, tmp_path, config_changes=None, weights=True):
    copy = tmp_path / "result"
    copy.mkdir()
    with open(os.path.join(result_dir, "config.json")) as f:
        config = json.load(f)
    config.update(config_changes or {})
    (copy / "config.json").write_text(json.dumps(config))
    if weights:
        (copy / "ensemble.weights.h5").write_bytes(
            _read(os.path.join(result_dir, "ensemble.weights.h5")))
    return str(copy)


def _assert_one_line_error(result, *phrases):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("quantens.export: error: ")
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_result_directory_without_weights_is_one_clear_error(trained, tmp_path):
    _, result_dir = trained
    copy = _result_dir_copy(result_dir, tmp_path, weights=False)
    result = run_script(["-m", "quantens.export", copy])
    _assert_one_line_error(result, "no ensemble.weights.h5", "train.py")
    assert sorted(os.listdir(copy)) == ["config.json"]


@pytest.mark.parametrize("changes, phrase", [
    ({"width": 16}, "shape"),            # Keras would refuse to load
    ({"bit_widths": [32, 4, 1]}, "not in the model"),  # Keras would load it silently
])
def test_weights_of_another_architecture_are_one_clear_error(trained, tmp_path, changes,
                                                             phrase):
    _, result_dir = trained
    copy = _result_dir_copy(result_dir, tmp_path, changes)
    result = run_script(["-m", "quantens.export", copy])
    _assert_one_line_error(result, "another architecture", phrase)
    # nothing written but the lock file of the export that owned the directory
    assert sorted(os.listdir(copy)) == [".lock", "config.json", "ensemble.weights.h5"]


# ------------------------------------------------------- every input checked (issue 23)


def test_export_ensemble_refuses_misuse_before_writing_anything(tmp_path, monkeypatch):
    from quantens.errors import UsageError

    ensemble = quantens.QuantEnsemble(tiny_model((32, 1), width=4), (32, 1))
    a_file = tmp_path / "taken"
    a_file.write_text("not a directory")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = str(tmp_path / "export")
    cases = [
        ((ensemble.model, out), {}, ["ensemble must be a QuantEnsemble, got Functional"]),
        ((ensemble, ""), {}, ["out_dir must be the path of the export directory, got ''"]),
        ((ensemble, str(a_file)), {}, [f"out_dir {a_file} is an existing file"]),
        ((ensemble, str(a_file / "export")), {}, [f"lies below {a_file}, a file"]),
        ((ensemble, "."), {}, ["is the current directory or one above it"]),
        ((ensemble, str(tmp_path)), {}, ["is the current directory or one above it"]),
        ((ensemble, out), {"batch_size": 0}, ["batch_size must be a whole number >= 1, got 0"]),
        ((ensemble, out), {"max_val_examples": 0},
         ["max_val_examples must be a whole number >= 1 or None, got 0"]),
        ((ensemble, out), {"max_val_examples": -5}, ["max_val_examples", "got -5"]),
        ((ensemble, out), {"extra": ["model"]}, ["extra must be a dict", "got list"]),
        ((ensemble, out), {"lce_int8": "int4"},
         ["lce_int8 must be one of exact, full, none, got 'int4'"]),
    ]
    for args, kwargs, phrases in cases:
        with pytest.raises(UsageError) as error:
            export.export_ensemble(*args, **kwargs)
        message = str(error.value)
        assert message.startswith("export_ensemble: ") and "\n" not in message, message
        assert all(p in message for p in phrases), (message, phrases)
    assert sorted(os.listdir(tmp_path)) == ["taken", "work"] and not os.listdir(work)
