"""The runtime of member files: LiteRT where it is installed, tf.lite otherwise, LCE for LCE files.

`quantens.export.runtime.create_interpreter` is the one place quantens creates
an interpreter. Without LiteRT (`ai_edge_litert`), as on an install without
the `litert` extra, "auto" falls back to `tf.lite.Interpreter`; here that is
made real by blocking the import (`sys.modules[name] = None`, Python's own way
to make an import fail), not by replacing an interpreter. The tests that
compare LiteRT with tf.lite skip, with the reason, where LiteRT is not
installed (`pip install -e .[test]` installs it).
"""

import sys
import warnings

import numpy as np
import pytest
from conftest import tiny_model

import quantens
from quantens import export
from quantens.export import runtime as rt

BITS = (32, 8, 2, 1)


def _litert_version() -> str | None:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return None
    import ai_edge_litert

    return ai_edge_litert.__version__


LITERT_VERSION = _litert_version()
needs_litert = pytest.mark.skipif(
    LITERT_VERSION is None,
    reason="ai-edge-litert is not installed (pip install 'quantens[litert]'; the test extra "
           "has it): only the tf.lite fallback is tested")


@pytest.fixture(autouse=True)
def _no_runtime_override(monkeypatch):
    """The tests set QUANTENS_TFLITE_RUNTIME themselves where they need it."""
    monkeypatch.delenv(rt.RUNTIME_ENV, raising=False)


@pytest.fixture
def without_litert(monkeypatch):
    """`import ai_edge_litert...` fails, as where the package is not installed."""
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture(scope="module")
def files():
    """{bits: flatbuffer} of an untrained width-8 ensemble: int8 (8), packed INT4 (2), LCE (1)."""
    ensemble = quantens.QuantEnsemble(tiny_model(BITS), BITS)
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype(np.float32)
    made = {b: export.convert(ensemble.member(b), b, calibration_data=x) for b in (8, 2, 1)}
    assert made[8][1] == "int8" and made[1][1] == "lce"
    assert made[2][2]["weights_storage"]["int4_tensors"] > 0  # the packed path is exercised
    return {b: flatbuffer for b, (flatbuffer, _, _) in made.items()}, ensemble, x


def test_tensorflow_is_taken_when_asked_and_unknown_runtimes_are_refused(monkeypatch):
    assert rt.choose_runtime(runtime="tensorflow") == "tensorflow"
    monkeypatch.setenv(rt.RUNTIME_ENV, "TensorFlow")  # the environment switch, any case
    assert rt.choose_runtime() == "tensorflow"
    monkeypatch.setenv(rt.RUNTIME_ENV, "tflite")
    with pytest.raises(ValueError, match=rt.RUNTIME_ENV):
        rt.choose_runtime()
    with pytest.raises(ValueError, match="runtime must be one of auto, litert, tensorflow"):
        rt.choose_runtime(runtime="lite")


def test_auto_falls_back_to_tf_lite_where_litert_does_not_import(without_litert):
    assert rt.choose_runtime() == rt.choose_runtime(runtime="auto") == "tensorflow"
    with pytest.raises(ImportError, match=r"quantens\[litert\]"):
        rt.choose_runtime(runtime="litert")


@needs_litert
def test_auto_picks_litert_where_it_imports(monkeypatch):
    assert rt.choose_runtime() == rt.choose_runtime(runtime="litert") == "litert"
    monkeypatch.setenv(rt.RUNTIME_ENV, "tensorflow")
    assert rt.choose_runtime() == "tensorflow"
    assert rt.choose_runtime(runtime="auto") == "litert"  # the argument wins over the variable


@pytest.mark.trains
def test_each_file_gets_its_runtime_and_says_which(files, without_litert):
    import tensorflow as tf

    flatbuffers, _, _ = files
    interpreter, info = rt.create_interpreter(flatbuffers[8])
    assert isinstance(interpreter, tf.lite.Interpreter)
    assert info == {"name": "tensorflow", "version": tf.__version__}
    # an LCE file runs on LCE's interpreter whatever is asked for
    import larq_compute_engine as lce

    for asked in (None, "tensorflow", "litert"):
        runner = export.TFLiteRunner(flatbuffers[1], runtime=asked)
        assert runner.runtime_info == {"name": "larq_compute_engine",
                                       "version": lce.__version__}
        assert runner.is_lce and runner.interpreter_name == "larq_compute_engine"


@needs_litert
@pytest.mark.trains
def test_litert_runs_non_lce_files_and_fidelity_names_it(files):
    from ai_edge_litert.interpreter import Interpreter

    flatbuffers, ensemble, x = files
    interpreter, info = rt.create_interpreter(flatbuffers[8])
    assert type(interpreter) is Interpreter
    assert info == {"name": "litert", "version": LITERT_VERSION}
    report = export.fidelity(ensemble.member(8), flatbuffers[8], x[:4])
    assert (report["interpreter"], report["interpreter_version"]) == ("litert", LITERT_VERSION)
    report = export.fidelity(ensemble.member(8), flatbuffers[8], x[:4], runtime="tensorflow")
    assert report["interpreter"] == "tensorflow"


@needs_litert
@pytest.mark.trains
@pytest.mark.parametrize("bits,xnnpack", [(8, True), (8, False), (2, False)])
def test_litert_and_tf_lite_give_identical_outputs(files, bits, xnnpack):
    flatbuffers, _, x = files
    outputs = {}
    for name in ("litert", "tensorflow"):
        runner = export.TFLiteRunner(flatbuffers[bits], use_xnnpack=xnnpack, runtime=name)
        assert runner.runtime_info["name"] == name
        outputs[name] = runner(x)
    assert np.ptp(outputs["tensorflow"]) > 0  # real logits, not a constant
    np.testing.assert_array_equal(outputs["litert"], outputs["tensorflow"])


@pytest.mark.trains
def test_creating_interpreters_prints_no_deprecation(files, capfd):
    import tensorflow as tf

    flatbuffers, _, x = files
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every warning, however often it was given before
        for asked in ("tensorflow", None):
            for bits in (8, 2, 1):
                export.TFLiteRunner(flatbuffers[bits], runtime=asked)(x[:1])
        quiet = [str(w.message) for w in caught]
        # the control: TensorFlow's own constructor does warn, and this test sees it
        tf.lite.Interpreter(model_content=flatbuffers[8])
    out, err = capfd.readouterr()
    assert not any("deprecated" in m.lower() for m in quiet), quiet
    assert "deprecated" not in (out + err).lower(), out + err
    assert any("tf.lite.Interpreter is deprecated" in str(w.message) for w in caught[len(quiet):])
