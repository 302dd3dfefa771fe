import csv
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, run_script, tiny_model

pytestmark = pytest.mark.slow  # end-to-end runs; `make test-fast` leaves them out


def weights(path, bit_widths=(8, 1), trainable=None):
    """The weights of a weights file: all, or only the (non-)trainable ones."""
    model = tiny_model(bit_widths)
    model.load_weights(str(path))
    chosen = {None: model.weights, True: model.trainable_weights,
              False: model.non_trainable_weights}[trainable]
    return [w.numpy() for w in chosen]


def max_difference(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def base_flags(tfds_dir, *extra):
    return ["train.py", "--width", "8", "--bit-widths", "8", "1", "--data-dir", tfds_dir,
            "--deterministic", "--sync-bn", *extra]


def test_gpus_without_a_gpu_is_one_clear_error(tmp_path):
    result = run_script(["train.py", "--gpus", "0", "--result-path", str(tmp_path / "r")])
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--gpus 0" in lines[0] and "omit --gpus" in lines[0], lines
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("bits, steps", [(("32",), ["--epochs", "1"]),
                                         (("8", "1"), ["--epochs", "1", "--test-run"])])
def test_two_cpu_replicas_equal_one_device_at_the_same_global_batch(bits, steps, tfds_dir,
                                                                     tmp_path):
    """Same global batch, same data order, BN statistics synchronised: same weights.

    The per-replica gradients are summed in another order than one device sums
    them; rounding to a quantization grid turns such 1e-7 differences into
    different levels over many steps, and Adam's normalisation amplifies them
    in near-zero gradients, so the 44-step comparison uses the full-precision
    member and SGD, the quantized members one step. In that step the
    quantized members' BN statistics are sums over activations on a grid: an
    input within float32 rounding of a grid threshold lands on another level
    when the convolution sums in another order, which moves a batch mean by
    ~1e-4 of its size (seen on the digits batch of seed 0): the trained weights
    must agree to 1e-5, the moving statistics to 1e-3 of their largest value.
    """
    flags = ["train.py", "--width", "8", "--bit-widths", *bits, "--data-dir", tfds_dir,
             "--deterministic", "--sync-bn", "--optimizer", "sgd", "--lr", "0.05", *steps]
    one = run_script([*flags, "--batch-size", "32", "--result-path", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_script([*flags, "--batch-size", "16", "--cpu-replicas", "2",
                      "--result-path", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    bit_widths = tuple(int(b) for b in bits)
    one_dir, two_dir = tmp_path / "one" / "ensemble.weights.h5", tmp_path / "two" / "ensemble.weights.h5"
    a = weights(one_dir, bit_widths, trainable=True)
    b = weights(two_dir, bit_widths, trainable=True)
    initial = [w.numpy() for w in tiny_model(bit_widths).trainable_weights]
    assert max_difference(a, initial) > 1e-3  # training moved the weights
    assert max_difference(a, b) < 1e-5
    statistics = zip(weights(one_dir, bit_widths, trainable=False),
                     weights(two_dir, bit_widths, trainable=False), strict=True)
    for x, y in statistics:
        np.testing.assert_allclose(x, y, rtol=0, atol=max(1e-6, 1e-3 * float(np.abs(x).max())))


# kill -9 from inside the run, right after it logs epoch 2 batch 20: a point it certainly
# reaches and cannot have passed, however slow the machine (no race with a watcher)
KILLED_AT_BATCH = """
import os, signal, sys
import train
from quantens import results

log_batch = results.LogFile.on_train_batch_end
def killing(self, batch, logs=None):
    log_batch(self, batch, logs)
    if (self.epoch + 1, batch + 1) == (2, 20):
        os.kill(os.getpid(), signal.SIGKILL)

results.LogFile.on_train_batch_end = killing
sys.exit(train.main(sys.argv[1:]))
"""


def test_a_killed_run_resumes_where_it_stopped_and_ends_as_an_uninterrupted_one(
    tfds_dir, tmp_path
):
    flags = base_flags(tfds_dir, "--epochs", "2", "--batch-size", "32", "--log-interval", "10")
    killed = tmp_path / "killed"
    script = tmp_path / "killed_train.py"
    script.write_text(KILLED_AT_BATCH)
    result = run_script([str(script), *flags[1:], "--result-path", str(killed)],
                        env={"PYTHONPATH": ROOT})
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert "Epoch[2] Batch[20]" in (killed / "train.log").read_text()
    rows = list(csv.DictReader(open(killed / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1]
    again = run_script([*flags, "--result-path", str(killed)])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Epoch 2/2" in again.stdout and "Epoch 1/2" not in again.stdout
    rows = list(csv.DictReader(open(killed / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    straight = run_script([*flags, "--result-path", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-3000:]
    a = weights(killed / "ensemble.weights.h5")
    b = weights(tmp_path / "straight" / "ensemble.weights.h5")
    assert max_difference(a, b) < 1e-6


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_on_localhost_train_together(tfds_dir, tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    result_path = tmp_path / "result"
    flags = ["train.py", "--width", "8", "--bit-widths", "8", "1", "--data-dir", tfds_dir,
             "--epochs", "1", "--test-run", "--batch-size", "16", "--result-path",
             str(result_path)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(tf_config)}
        processes.append(subprocess.Popen(
            [sys.executable, *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        ))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=400))
    finally:
        for process in processes:
            process.kill()
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    assert (result_path / "metrics.json").is_file()
    assert json.load(open(result_path / "config.json"))["batch_size"] == 16
    chief = weights(result_path / "ensemble.weights.h5")
    other = weights(result_path / ".workers" / "1" / "ensemble.weights.h5")
    assert max_difference(chief, other) == 0
    assert "bits   test accuracy" in outputs[0][0] and "bits" not in outputs[1][0]
