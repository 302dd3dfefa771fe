"""Packed INT4 filters and the narrow-range weight grid that deploys exactly.

One `train.py --weight-quantization narrow --export` run (digits_resnet_e at its
default width, 32 8 4 3 2 1 bits, 4 epochs); the tests read its export and
compare each packed file with its int8 twin (`pack_int4=False`).
"""

import json
import os

import numpy as np
import pytest
from conftest import run_script

from quantens import export
from quantens.export.int4 import pack_nibbles

BITS = (32, 8, 4, 3, 2, 1)
# as test_export.py's int8 bound for DoReFa members (>= 99.16% over 8 seeds there)
INT8_MIN_AGREEMENT = 0.99


@pytest.fixture(scope="module")
def narrow_run(tfds_dir, tmp_path_factory):
    result_dir = str(tmp_path_factory.mktemp("narrow") / "run")
    result = run_script([
        "train.py", "--weight-quantization", "narrow", "--bit-widths", *map(str, BITS),
        "--epochs", "4", "--export", "--no-tensorboard", "--data-dir", tfds_dir,
        "--result-path", result_dir,
    ])
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(result_dir, "export", "export.json")) as f:
        report = json.load(f)
    ensemble, _ = export.load_result_ensemble(result_dir)
    val, calibration = export.export_datasets("digits", BITS, data_dir=tfds_dir)
    return ensemble, report, os.path.join(result_dir, "export"), val, calibration


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.slow  # the end-to-end run
def test_narrow_members_of_2_to_4_bits_store_every_grid_filter_as_int4(narrow_run):
    _, report, out, _, _ = narrow_run
    for b in (4, 3, 2):
        storage = report["members"][str(b)]["weights_storage"]
        convs = export.int8_conv_weights(_read(os.path.join(out, export.member_file(b))))
        packed = [c for c in convs if c["storage"] == "int4"]
        # the six quantized 3x3 convolutions; stem, shortcuts, BN and classifier stay int8
        assert storage["int4_tensors"] == len(packed) == 6, storage
        for conv in packed:
            rows = conv["weights"].reshape(conv["weights"].shape[0], -1)
            m = 2 ** (b - 1) - 1
            assert np.abs(rows).max() == m  # the channel max sits on the top level
            assert max(len(np.unique(r)) for r in rows) <= 2 * m + 1 < 2**b
        assert all(reason == "full precision (max-abs scale)"
                   for reason in storage["int8_reasons"].values()), storage
    # 8 bits: integers up to 127 (narrow) need int8
    assert report["members"]["8"]["weights_storage"]["int4_tensors"] == 0


@pytest.mark.slow  # the end-to-end run
def test_packed_files_compute_exactly_what_their_int8_twins_compute(narrow_run):
    """Same integers, same scales: identical outputs with TFLite's builtin kernels."""
    ensemble, _, out, val, calibration = narrow_run
    x = np.concatenate([np.asarray(batch[0]) for batch in val])
    for b in (4, 3, 2):
        twin = export.convert_member(ensemble, b, calibration, pack_int4=False)
        packed = _read(os.path.join(out, export.member_file(b)))
        assert len(packed) < len(twin)
        np.testing.assert_array_equal(
            export.TFLiteRunner(packed, use_xnnpack=False)(x),
            export.TFLiteRunner(twin, use_xnnpack=False)(x))


@pytest.mark.slow  # the end-to-end run
def test_narrow_files_agree_with_their_keras_members_and_shrink_with_the_bits(narrow_run):
    _, report, _, _, _ = narrow_run
    members = report["members"]
    for b in (8, 4, 3, 2):
        assert members[str(b)]["fidelity"]["agreement"] >= INT8_MIN_AGREEMENT, (
            b, members[str(b)]["fidelity"])
    size = {b: members[str(b)]["bytes"] for b in BITS}
    for b in (4, 3, 2):
        assert size[b] <= 0.6 * size[8], size
    assert size[32] > size[8] > size[4] and size[1] < size[2], size


def test_pack_nibbles_is_the_runtime_layout():
    values = np.array([-8, -1, 0, 1, 7], np.int8)
    packed = pack_nibbles(values)
    unpacked = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(-1)[:5].astype(int)
    np.testing.assert_array_equal(np.where(unpacked > 7, unpacked - 16, unpacked), values)
    assert packed.tolist() == [0xF8, 0x10, 0x07]


def test_export_without_int4_keeps_every_filter_int8(tmp_path):
    """`pack_int4=False` (`python -m quantens.export --no-int4`): the 2-bit file is the
    int8 twin, for runtimes that should run every filter on XNNPACK."""
    import quantens
    import zoo

    bits = (32, 2)
    ensemble = quantens.QuantEnsemble(zoo.create_model("digits_resnet_e", width=8,
                                                       bit_widths=bits), bits)
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
    packed = export.export_ensemble(ensemble, str(tmp_path / "a"), calibration_data=x)
    plain = export.export_ensemble(ensemble, str(tmp_path / "b"), calibration_data=x,
                                   pack_int4=False)
    assert packed["members"]["2"]["weights_storage"]["int4_tensors"] == 6
    assert "weights_storage" not in plain["members"]["2"]
    assert plain["members"]["2"]["bytes"] > packed["members"]["2"]["bytes"]
    convs = export.int8_conv_weights(_read(str(tmp_path / "b" / export.member_file(2))))
    assert {c["storage"] for c in convs} == {"int8"}
