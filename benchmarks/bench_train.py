#!/usr/bin/env python
"""Training throughput: one shared 5-member ensemble vs 5 separate models vs one float model.

Three ways to train the same architecture on the same batches:

  (a) shared    `QuantEnsemble(model, (32, 8, 4, 2, 1))`: one `train_step` runs all five
                members (five forward passes, one backward pass) and makes ONE optimizer
                update of the shared weights;
  (b) separate  five models built with `bit_widths=(b,)`, each in its own
                `QuantEnsemble(model_b, (b,))` with its own optimizer, trained one after
                the other on each batch (a "step" of (b) = five train steps);
  (c) float     one model with `bit_widths=(32,)` (a single float network);
  (d) sequential  (a) with `member_backward="sequential"`: each member's forward and
                backward in turn, gradients added, one update (issue 25: the memory of
                one member; goals time(d)/time(a) <= 1.05, memory(d)/memory(c) <= 1.5).

`--members N` trains N members instead of 5: the N-1 highest of 32 16 12 8 7 6 5 4 3 2,
and 1 (10 members: 32 16 12 8 7 6 5 4 3 1). Memory per variant: the process's peak RSS over the RSS before
the model was built (includes tracing and TensorFlow's caches), and `step MiB`: the
peak of TensorFlow's allocator during one traced step over what it held before the
step (the activations and gradients of the step).

Ratios are TIME ratios of the median step times, time(a) / time(b) and
time(a) / time(c): below 1 means (a) is faster. The goal of issue 8 is
time(a) / time(b) <= 0.85 (the shared step costs at most 0.85x the five
separate steps). images/s counts an image once per step although (a) and (b)
train five members on it.

Timing: all three variants live in ONE process (one subprocess per model, dtype
and XLA setting) and are traced and warmed up first; then `--repeats` rounds,
each timing `--steps` steps of every variant in rotating order, so that load from
other processes hits all variants alike. Reported: the median over rounds.
Peak memory: a fresh subprocess per variant (so peaks don't mix): the process's
peak RSS (`resource.getrusage`), and the GPU's peak where there is one.

Models: `digits` = `digits_resnet_e` on real batches of the embedded digits
dataset (8x8x1, batch 64); `resnet18` = `resnet18_e1` at 32x32x3, thumbnail
stem, 100 classes, synthetic data (batch 16 by default, so that it finishes on
a 2-core CPU; pass `--batch-size`).

    python benchmarks/bench_train.py                          # both models, float32
    python benchmarks/bench_train.py --models digits --dtype float32 bfloat16 --jit both
    python benchmarks/bench_train.py --profile                # where the time of (a) goes

`--profile` times the pieces of one step of (a) separately (forward per member,
backward, optimizer update, weight quantization) and summarises a
`tf.profiler` trace of the step by phase and op type.

Results are printed as a table and saved as JSON (`--out`, default
benchmarks/results/bench_train.json; results/ is not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BITS = (32, 8, 4, 2, 1)
MEMBER_BITS = (32, 16, 12, 8, 7, 6, 5, 4, 3, 2, 1)  # --members N: the N highest, then 1 bit
VARIANTS = ("shared", "sequential", "separate", "float")
LABELS = {
    "shared": "(a) shared, joint",
    "sequential": "(d) shared, sequential",
    "separate": "(b) separate models",
    "float": "(c) float model only",
}


def member_bits(n: int) -> tuple[int, ...]:
    """The bit-widths of an n-member ensemble: (32, 8, 4, 2, 1) for 5, else from MEMBER_BITS."""
    return BITS if n == len(BITS) else (*MEMBER_BITS[:n - 1], 1)
GOAL = 0.85  # issue 8: time(a) / time(b) <= 0.85

MODELS = {
    "digits": {
        "name": "digits_resnet_e", "input_shape": (8, 8, 1), "num_classes": 10,
        "kwargs": {}, "data": "digits", "batch_size": 64, "steps": 10, "repeats": 10,
    },
    "resnet18": {
        "name": "resnet18_e1", "input_shape": (32, 32, 3), "num_classes": 100,
        "kwargs": {"initial_layers": "thumbnail"}, "data": "synthetic",
        "batch_size": 16, "steps": 2, "repeats": 3,
    },
}
RESULT_PREFIX = "BENCH_RESULT "
PROGRESS_PREFIX = "BENCH_PROGRESS "


# =============================================================== worker side
# Everything below up to "parent side" runs in a subprocess with TensorFlow.


def _progress(message: str) -> None:
    print(PROGRESS_PREFIX + message, flush=True)


def _rss_bytes() -> int:
    """The current resident set size of this process."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _peak_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux: KiB


class _Worker:
    """Builds the variants of one configuration; times them, measures or profiles them."""

    def __init__(self, spec: dict):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        sys.path.insert(0, ROOT)
        import quantens  # noqa: F401  (tf-keras before TensorFlow)
        from quantens.cli import load_tensorflow

        self.tf = tf = load_tensorflow()
        self.spec = spec
        self.model_spec = MODELS[spec["model"]]
        self.gpu = bool(tf.config.list_physical_devices("GPU"))
        self.batches = self._batches()  # seeded by their own seeds
        self.data_rss = _rss_bytes()
        # before any model is built: the policy applies to layers made afterwards
        if spec["dtype"] != "float32":
            tf.keras.mixed_precision.set_global_policy(f"mixed_{spec['dtype']}")
        tf.keras.utils.set_random_seed(0)

    # ------------------------------------------------------------------ data

    def _batches(self, count: int = 4) -> list:
        tf, spec = self.tf, self.model_spec
        batch = self.spec["batch_size"]
        if spec["data"] == "digits":
            import quantens.data as qd

            ds = qd.load("digits", "train", batch, training=True,
                         data_dir=self.spec.get("data_dir"), shuffle_seed=0)
            batches = [(tf.identity(x), tf.identity(y)) for x, y in ds.take(count)]
            if not batches:
                raise SystemExit(f"--batch-size {batch} is larger than digits' training split")
            return batches
        import numpy as np

        rng = np.random.default_rng(0)
        return [
            (tf.constant(rng.normal(size=(batch, *spec["input_shape"])).astype("float32")),
             tf.constant(rng.integers(0, spec["num_classes"], size=batch).astype("int32")))
            for _ in range(count)
        ]

    # ---------------------------------------------------------------- models

    def build(self, bit_widths: Sequence[int], member_backward: str = "joint"):
        """A compiled QuantEnsemble of `bit_widths` and its tf.function train step."""
        import quantens
        import zoo

        tf, spec = self.tf, self.model_spec
        model = zoo.create_model(
            spec["name"], input_shape=spec["input_shape"], num_classes=spec["num_classes"],
            bit_widths=tuple(bit_widths), **spec["kwargs"],
        )
        ensemble = quantens.QuantEnsemble(model, bit_widths, member_backward=member_backward)
        ensemble.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
        step = tf.function(ensemble.train_step, jit_compile=self.spec["jit"])
        return ensemble, step

    def build_variant(self, variant: str) -> list:
        bits = member_bits(self.spec.get("members", len(BITS)))
        if variant == "shared":
            return [self.build(bits)]
        if variant == "sequential":
            return [self.build(bits, member_backward="sequential")]
        if variant == "separate":
            return [self.build((b,)) for b in bits]
        return [self.build((32,))]

    def run_steps(self, members: list, steps: int, offset: int = 0) -> float:
        """Wall seconds for `steps` steps of a variant (every model of it on each batch)."""
        return self.run_steps_timed(members, steps, offset)[0]

    def run_steps_timed(self, members: list, steps: int, offset: int = 0) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) for `steps` steps of a variant.

        The CPU time counts the work of all of this process's threads; other
        processes on the machine inflate it far less than the wall time.
        """
        out = None
        started, cpu_started = time.perf_counter(), time.process_time()
        for i in range(steps):
            batch = self.batches[(offset + i) % len(self.batches)]
            for _, step in members:
                out = step(batch)
        self._sync(out, members)
        return time.perf_counter() - started, time.process_time() - cpu_started

    @staticmethod
    def _sync(out, members) -> None:
        # Reading values waits for the queued work (matters on GPUs).
        if out is not None:
            float(out["loss"])
        for ensemble, _ in members:
            ensemble.model.trainable_variables[0].numpy()

    # ----------------------------------------------------------------- kinds

    def time_variants(self) -> dict:
        spec = self.spec
        variants = {}
        first_step = {}
        for v in VARIANTS:
            _progress(f"building and tracing {LABELS[v]}")
            variants[v] = self.build_variant(v)
            first_step[v] = self.run_steps(variants[v], 1)  # trace (+ XLA compile)
            self.run_steps(variants[v], spec["warmup"], offset=1)
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        cpu_times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(spec["repeats"]):
            k = r % len(VARIANTS)
            order = VARIANTS[k:] + VARIANTS[:k]
            for v in order:
                wall, cpu = self.run_steps_timed(variants[v], spec["steps"])
                times[v].append(wall / spec["steps"])
                cpu_times[v].append(cpu / spec["steps"])
            _progress(
                f"round {r + 1}/{spec['repeats']}: "
                + ", ".join(f"{v} {times[v][-1] * 1e3:.1f} ms" for v in VARIANTS)
            )
        batch = spec["batch_size"]
        result = {"variants": {}, "peak_rss_bytes_all_variants": _peak_rss_bytes()}
        for v in VARIANTS:
            median = statistics.median(times[v])
            result["variants"][v] = {
                "step_seconds": times[v],
                "median_step_seconds": median,
                "min_step_seconds": min(times[v]),
                "cpu_step_seconds": cpu_times[v],
                "median_cpu_step_seconds": statistics.median(cpu_times[v]),
                "images_per_second": batch / median,
                "first_step_seconds": first_step[v],
                "optimizer": type(variants[v][0][0].optimizer).__name__,
            }
        med = {v: result["variants"][v]["median_step_seconds"] for v in VARIANTS}
        cpu = {v: result["variants"][v]["median_cpu_step_seconds"] for v in VARIANTS}
        fastest = {v: result["variants"][v]["min_step_seconds"] for v in VARIANTS}
        def per_round(x: str, y: str) -> list[float]:
            return [p / q for p, q in zip(times[x], times[y], strict=True)]

        result["ratios"] = {
            "a_over_b": med["shared"] / med["separate"],
            "a_over_c": med["shared"] / med["float"],
            "a_over_b_cpu": cpu["shared"] / cpu["separate"],
            "a_over_c_cpu": cpu["shared"] / cpu["float"],
            "a_over_b_min": fastest["shared"] / fastest["separate"],
            "a_over_c_min": fastest["shared"] / fastest["float"],
            "a_over_b_per_round": per_round("shared", "separate"),
            "a_over_c_per_round": per_round("shared", "float"),
            "d_over_a": med["sequential"] / med["shared"],
            "d_over_b": med["sequential"] / med["separate"],
            "d_over_c": med["sequential"] / med["float"],
            "d_over_a_cpu": cpu["sequential"] / cpu["shared"],
            "d_over_a_per_round": per_round("sequential", "shared"),
        }
        return result

    def memory(self) -> dict:
        tf, variant = self.tf, self.spec["variant"]
        if self.gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")
        _progress(f"memory of {LABELS[variant]}")
        members = self.build_variant(variant)
        self.run_steps(members, 1)  # traces
        device = "GPU:0" if self.gpu else "CPU:0"
        tf.config.experimental.reset_memory_stats(device)
        held = tf.config.experimental.get_memory_info(device)["current"]
        self.run_steps(members, 1, offset=1)
        result = {
            "variant": variant,
            "rss_before_build_bytes": self.data_rss,
            "peak_rss_bytes": _peak_rss_bytes(),
            # TensorFlow's allocator during one traced step, over what it held before it
            "step_peak_bytes": tf.config.experimental.get_memory_info(device)["peak"] - held,
        }
        result["peak_rss_over_baseline_bytes"] = result["peak_rss_bytes"] - self.data_rss
        if self.gpu:
            result["gpu_peak_bytes"] = tf.config.experimental.get_memory_info("GPU:0")["peak"]
        return result

    def profile(self) -> dict:
        return _profile(self)


def _interleaved_medians(
    pieces: dict, steps: int, repeats: int
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Median seconds per call of each `name: (fn, args)`, timed in interleaved rounds.

    Every round times every piece once (in rotating order), so that load from
    other processes spreads over all pieces alike.
    """
    import tensorflow as tf

    def sync(out):
        flat = [t for t in tf.nest.flatten(out) if t is not None]
        if flat:
            flat[-1].numpy()

    for name, (fn, args) in pieces.items():
        _progress(f"tracing {name}")
        sync(fn(*args))
    names = list(pieces)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, args = pieces[name]
            out = None
            started = time.perf_counter()
            for _ in range(steps):
                out = fn(*args)
            sync(out)
            samples[name].append((time.perf_counter() - started) / steps)
        _progress(f"round {r + 1}/{repeats} of {len(names)} pieces")
    return {name: statistics.median(values) for name, values in samples.items()}, samples


def _profile(worker: _Worker) -> dict:
    """Where the time of one shared 5-member train step goes."""
    import quantens

    tf, spec = worker.tf, worker.spec
    jit = spec["jit"]
    steps, repeats = spec["steps"], spec["repeats"]
    _progress("building and tracing (a) shared 5-member")
    ensemble, step = worker.build(BITS)
    x, y = worker.batches[0]
    for _ in range(1 + spec["warmup"]):
        step((x, y))  # builds the optimizer's slots before the pieces are traced
    model = ensemble.model
    variables = model.trainable_variables
    loss_fn = ensemble.member_loss_fn

    def member_loss(b, x, y):
        with quantens.bits(b):
            logits = tf.cast(model(x, training=True), tf.float32)
        return tf.nn.compute_average_loss(loss_fn(y, logits))

    def forward_fn(b):
        return tf.function(lambda x, y: member_loss(b, x, y), jit_compile=jit)

    def forward_backward_fn(b):
        def f(x, y):
            with tf.GradientTape() as tape:
                loss = member_loss(b, x, y)
            return [g for g in tape.gradient(loss, variables) if g is not None]

        return tf.function(f, jit_compile=jit)

    def all_forward(x, y):
        logits = ensemble.member_logits(x, training=True)
        return ensemble.compute_ensemble_loss(x, y, logits)[0]

    def all_forward_backward(x, y):
        with tf.GradientTape() as tape:
            loss = all_forward(x, y)
        return tape.gradient(loss, variables)

    def quantize_fn(b):
        kernels = [
            (layer.kernel_quantizer.for_bits(b), layer.kernel.latent_variable)
            for layer in model.layers
            if isinstance(layer, (quantens.QuantConv2D, quantens.QuantDense))
        ]
        kernels = [(q, k) for q, k in kernels if q is not None]
        if not kernels:
            return None
        return tf.function(
            lambda: tf.add_n([tf.reduce_sum(q(k)) for q, k in kernels]), jit_compile=jit
        )

    grads = tf.function(all_forward_backward, jit_compile=jit)(x, y)
    apply = tf.function(
        lambda grads: ensemble.optimizer.apply_gradients(zip(grads, variables, strict=True)),
        jit_compile=jit,
    )

    pieces = {
        "train_step": (step, ((x, y),)),
        "forward_all": (tf.function(all_forward, jit_compile=jit), (x, y)),
        "forward_backward_all": (tf.function(all_forward_backward, jit_compile=jit), (x, y)),
        "apply_gradients": (apply, (grads,)),
    }
    for b in BITS:
        pieces[f"forward_{b}"] = (forward_fn(b), (x, y))
        pieces[f"forward_backward_{b}"] = (forward_backward_fn(b), (x, y))
        quantize = quantize_fn(b)
        if quantize is not None:
            pieces[f"quantize_kernels_{b}"] = (quantize, ())
    medians, samples = _interleaved_medians(pieces, steps, repeats)
    per_member = {
        str(b): {
            "forward": medians[f"forward_{b}"],
            "forward_backward": medians[f"forward_backward_{b}"],
            "quantize_kernels": medians.get(f"quantize_kernels_{b}", 0.0),
        }
        for b in BITS
    }
    pieces = {k: v for k, v in medians.items() if not k.endswith(tuple(f"_{b}" for b in BITS))}
    _progress("tf.profiler trace of the train step")
    trace = _trace_ops(tf, step, (x, y), steps=max(1, min(steps, 5)),
                       model_name=model.name, optimizer_name=ensemble.optimizer.name)
    return {"pieces": pieces, "per_member": per_member, "trace": trace,
            "samples_seconds": samples, "batch_size": spec["batch_size"]}


_BACKWARD_TOP_LEVEL = {"Abs", "LessEqual", "Less", "SelectV2", "Select", "AddN", "ZerosLike",
                       "GreaterEqual", "Greater", "Mul", "Neg", "Sign", "OnesLike"}


def _phase(name: str, op_type: str, model_name: str, optimizer_name: str) -> str:
    """forward / backward / optimizer / other, from an op's name scope."""
    scope = name.split("/")[0]
    if scope == "gradient_tape":
        return "backward"
    if "/" not in name and op_type in _BACKWARD_TOP_LEVEL:
        return "backward"  # custom gradients (STE masks) and gradient sums: unscoped
    if re.fullmatch(re.escape(model_name) + r"(_\d+)?", scope):
        return "forward"
    if scope.startswith(optimizer_name) or scope in ("Adam", "LossScaleOptimizer"):
        return "optimizer"
    if "crossentropy" in scope or scope.startswith("add") or scope.startswith("truediv"):
        return "loss"
    return "other (metrics, casts)"


def _trace_ops(tf, fn, args, steps: int, model_name: str, optimizer_name: str) -> dict:
    """Runs `fn(args)` `steps` times under tf.profiler; op time by phase and op type."""
    import collections

    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError as error:
        return {"error": f"cannot read profiler traces: {error}"}
    logdir = tempfile.mkdtemp(prefix="bench_train_profile.")
    tf.profiler.experimental.start(logdir)
    try:
        out = None
        for _ in range(steps):
            out = fn(args)
        float(out["loss"])
    finally:
        tf.profiler.experimental.stop()
    paths = sorted(
        os.path.join(d, f) for d, _, files in os.walk(logdir) for f in files
        if f.endswith(".xplane.pb")
    )
    if not paths:
        return {"error": "the profiler wrote no trace"}
    space = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as f:
        space.ParseFromString(f.read())
    by_type: collections.Counter = collections.Counter()
    by_phase: collections.Counter = collections.Counter()
    for plane in space.planes:
        metadata = plane.event_metadata
        for line in plane.lines:
            # executor threads (CPU); GPU planes have streams with kernels instead
            if not (line.name.startswith("tf_Compute") or plane.name.startswith("/device:GPU")):
                continue
            for event in line.events:
                full = metadata[event.metadata_id].name
                if ":" not in full or "::" in full:  # "name:OpType" only, no executor events
                    continue
                name, op_type = full.rsplit(":", 1)
                seconds = event.duration_ps * 1e-12 / steps
                by_type[op_type] += seconds
                by_phase[_phase(name, op_type, model_name, optimizer_name)] += seconds
    total = sum(by_type.values())
    return {
        "steps": steps,
        "op_seconds_per_step": total,
        "by_phase": dict(by_phase.most_common()),
        "by_op_type": dict(by_type.most_common(15)),
        "note": "op time summed over executor threads (ops run in parallel), per step",
    }


def worker_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    worker = _Worker(spec)
    kind = spec["kind"]
    result = {"time": worker.time_variants, "memory": worker.memory,
              "profile": worker.profile}[kind]()
    result["gpu"] = worker.gpu
    result["tensorflow"] = worker.tf.__version__
    result["compute_dtype"] = worker.tf.keras.mixed_precision.global_policy().compute_dtype
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# =============================================================== parent side


def _run_worker(spec: dict, label: str) -> dict:
    """Runs one configuration in a fresh Python; relays its progress; returns its result."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    started = time.time()
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   env=env, cwd=ROOT)
        result = None
        for line in process.stdout:
            if line.startswith(PROGRESS_PREFIX):
                elapsed = time.time() - started
                print(f"  [{label} {elapsed:5.0f}s] {line[len(PROGRESS_PREFIX):].rstrip()}",
                      file=sys.stderr, flush=True)
            elif line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX):])
        process.wait()
        if process.returncode != 0 or result is None:
            stderr.seek(0)
            tail = [ln for ln in stderr.read().strip().splitlines() if ln.strip()][-5:]
            message = " | ".join(tail) or f"exit code {process.returncode}"
            print(f"  [{label}] FAILED: {message}", file=sys.stderr, flush=True)
            return {"error": message}
    result["wall_seconds"] = round(time.time() - started, 1)
    return result


def _configurations(args) -> list[dict]:
    jits = {"off": [False], "on": [True], "both": [False, True]}[args.jit]
    configurations = []
    for model in args.models:
        defaults = MODELS[model]
        for dtype in args.dtype:
            for jit in jits:
                configurations.append({
                    "model": model, "dtype": dtype, "jit": jit,
                    "batch_size": args.batch_size or defaults["batch_size"],
                    "steps": args.steps or defaults["steps"],
                    "repeats": args.repeats or defaults["repeats"],
                    "warmup": args.warmup, "data_dir": args.data_dir,
                    "members": args.members,
                })
    return configurations


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f}"


def format_table(entries: list[dict]) -> str:
    """The table of a benchmark run: one row per variant, ratios per configuration."""
    header = (f"{'model':<16} {'dtype':<8} {'xla':<3} {'batch':>5}  {'variant':<22} "
              f"{'step ms':>9} {'CPU ms':>8} {'images/s':>9} {'1st step s':>10} "
              f"{'peak RSS MiB':>12} {'(+build)':>9} {'step MiB':>9}")
    lines = [header, "-" * len(header)]
    for entry in entries:
        config, timing, memory = entry["config"], entry["timing"], entry.get("memory", {})
        prefix = (f"{MODELS[config['model']]['name']:<16} {config['dtype']:<8} "
                  f"{'on' if config['jit'] else 'off':<3} {config['batch_size']:>5}")
        if "error" in timing:
            lines.append(f"{prefix}  FAILED: {timing['error'][:120]}")
            continue
        for i, v in enumerate(VARIANTS):
            t = timing["variants"][v]
            m = memory.get(v, {})
            lines.append(
                f"{prefix if i == 0 else ' ' * len(prefix)}  {LABELS[v]:<22} "
                f"{t['median_step_seconds'] * 1e3:>9.1f} "
                f"{t['median_cpu_step_seconds'] * 1e3:>8.1f} {t['images_per_second']:>9.0f} "
                f"{t['first_step_seconds']:>10.1f} {_mib(m.get('peak_rss_bytes')):>12} "
                f"{_mib(m.get('peak_rss_over_baseline_bytes')):>9} "
                f"{_mib(m.get('step_peak_bytes')):>9}"
                + (f"  GPU peak {_mib(m['gpu_peak_bytes'])} MiB" if "gpu_peak_bytes" in m else "")
            )
        r = timing["ratios"]
        verdict = "meets" if r["a_over_b"] <= GOAL else "misses"
        paired = statistics.median(r["a_over_b_per_round"])
        pad = " " * len(prefix)
        lines.append(
            f"{pad}  time(a)/time(b) = {r['a_over_b']:.3f} ({verdict} the goal <= {GOAL})   "
            f"time(a)/time(c) = {r['a_over_c']:.3f}"
        )
        memory_ratio = ""
        if memory.get("sequential", {}).get("step_peak_bytes") and memory.get("float", {}).get(
                "step_peak_bytes"):
            d_mem, c_mem = memory["sequential"], memory["float"]
            memory_ratio = (
                f"   memory(d)/memory(c): step {d_mem['step_peak_bytes'] / c_mem['step_peak_bytes']:.2f}"
                f", RSS (+build) {d_mem['peak_rss_over_baseline_bytes'] / c_mem['peak_rss_over_baseline_bytes']:.2f}"
            )
            if memory.get("shared", {}).get("step_peak_bytes"):
                a_mem = memory["shared"]
                memory_ratio += (
                    f"; memory(a)/memory(c): step "
                    f"{a_mem['step_peak_bytes'] / c_mem['step_peak_bytes']:.2f}, RSS (+build) "
                    f"{a_mem['peak_rss_over_baseline_bytes'] / c_mem['peak_rss_over_baseline_bytes']:.2f}"
                )
        lines.append(
            f"{pad}  time(d)/time(a) = {r['d_over_a']:.3f} (goal <= 1.05, by CPU time "
            f"{r['d_over_a_cpu']:.3f}, median per-round "
            f"{statistics.median(r['d_over_a_per_round']):.3f})   time(d)/time(b) = "
            f"{r['d_over_b']:.3f} (goal <= {GOAL})" + memory_ratio
        )
        lines.append(
            f"{pad}    a/b by CPU time {r['a_over_b_cpu']:.3f}, fastest rounds "
            f"{r['a_over_b_min']:.3f}, median per-round {paired:.3f};  a/c by CPU time "
            f"{r['a_over_c_cpu']:.3f}, fastest rounds {r['a_over_c_min']:.3f}"
        )
    lines.append(
        "step ms: median wall time over rounds; CPU ms: this process's CPU time (all "
        "threads) per step, less sensitive to other load; images/s: batch / step time (an image counts once "
        "although (a) and (b) train 5 members on it); 1st step s: tracing (+ XLA) and one "
        "step; peak RSS: a fresh process per variant, (+build) = peak minus the RSS before "
        "the model was built; ratios are time ratios (< 1: (a) is faster)"
    )
    return "\n".join(lines)


def format_profile(entry: dict) -> str:
    """Where the time of one shared 5-member step goes, as text."""
    config, profile = entry["config"], entry["profile"]
    if "error" in profile:
        return f"profile of {config}: FAILED: {profile['error']}"
    p, members = profile["pieces"], profile["per_member"]
    ms = 1e3
    step = p["train_step"]

    def row(label, seconds, share=True):
        percent = f"{100 * seconds / step:6.1f}%" if share else ""
        return f"  {label:<52} {seconds * ms:8.2f} ms {percent}"

    backward = p["forward_backward_all"] - p["forward_all"]
    rest = step - p["forward_backward_all"]
    lines = [
        f"where the time goes: one shared {len(BITS)}-member train_step of "
        f"{MODELS[config['model']]['name']}, batch {config['batch_size']}, {config['dtype']}, "
        f"XLA {'on' if config['jit'] else 'off'}",
        "(medians of tf.function-wrapped pieces, each timed on its own, in interleaved rounds)",
        row("full train_step", step),
        row(f"forward of all {len(BITS)} members + loss", p["forward_all"]),
    ]
    lines += [row(f"    member {b} bit forward alone", members[str(b)]["forward"], False)
              for b in BITS]
    lines += [
        row("backward (forward+backward - forward)", backward),
        row("optimizer update alone (apply_gradients)", p["apply_gradients"]),
        row("    step - forward+backward (it overlaps backward)", rest, False),
    ]
    alone = sum(members[str(b)]["forward_backward"] for b in BITS)
    lines.append(
        "  forward+backward of each member alone: "
        + ", ".join(f"{b}: {members[str(b)]['forward_backward'] * ms:.2f}" for b in BITS)
        + f" ms; sum {alone * ms:.2f} ms vs {p['forward_backward_all'] * ms:.2f} ms together"
    )
    lines.append(
        "  weight quantization of all quantized kernels (part of each forward): "
        + ", ".join(f"{b}: {members[str(b)]['quantize_kernels'] * ms:.2f}" for b in BITS)
        + " ms"
    )
    trace = profile.get("trace", {})
    if "error" in trace:
        lines.append(f"  profiler: {trace['error']}")
    elif trace:
        total = trace["op_seconds_per_step"] or 1.0
        lines.append(f"  tf.profiler, op time per step by phase ({trace['note']}; "
                     f"{trace['op_seconds_per_step'] * ms:.1f} ms in all):")
        lines.append("    " + ", ".join(f"{k} {100 * v / total:.1f}%"
                                        for k, v in trace["by_phase"].items()))
        lines.append("  top op types:")
        for op_type, seconds in list(trace["by_op_type"].items())[:10]:
            lines.append(f"    {op_type:<36} {seconds * ms:8.2f} ms {100 * seconds / total:5.1f}%")
    return "\n".join(lines)


def _write_json(path: str, data: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bench.", suffix=".json.tmp", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "processor": platform.processor()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Training images/s: shared 5-member ensemble vs 5 separate models vs "
                    "one float model.",
    )
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["digits", "resnet18"])
    p.add_argument("--dtype", nargs="+", choices=("float32", "bfloat16", "float16"),
                   default=["float32"],
                   help="compute dtypes to run (bfloat16/float16: mixed precision)")
    p.add_argument("--jit", nargs="?", const="on", default="off", choices=("off", "on", "both"),
                   help="XLA-compile the train steps (`--jit` = on; `--jit both` runs both)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: 64 for digits, 16 for resnet18")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per round (default: 10 digits, 2 resnet18)")
    p.add_argument("--repeats", type=int, default=None,
                   help="rounds; the median is reported (default: 10 digits, 3 resnet18)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after tracing")
    p.add_argument("--members", type=int, default=len(BITS),
                   help="members of the ensemble: 5 is (32, 8, 4, 2, 1); other N the N-1 "
                   "highest of 32 16 12 8 7 6 5 4 3 2, and 1")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the per-variant peak-memory subprocesses")
    p.add_argument("--profile", action="store_true",
                   help="instead of the table: where the time of one step of (a) goes")
    p.add_argument("--data-dir", default=None, help="TFDS data directory (digits)")
    p.add_argument("--out", default=None,
                   help="JSON output (default benchmarks/results/bench_train.json, "
                        "or bench_train_profile.json with --profile)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for flag in ("batch_size", "steps", "repeats"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must not be negative")
    if not 2 <= args.members <= len(MEMBER_BITS):
        p.error(f"--members must be from 2 to {len(MEMBER_BITS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    name = "bench_train_profile.json" if args.profile else "bench_train.json"
    out = args.out or os.path.join(ROOT, "benchmarks", "results", name)
    configurations = _configurations(args)
    report = {"benchmark": "bench_train", "command": " ".join(sys.argv),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": _machine(),
              "time_ratio": "time(a) / time(b) and time(a) / time(c) of median step times",
              "goal_a_over_b": GOAL, "entries": []}
    started = time.time()
    for i, config in enumerate(configurations, 1):
        label = (f"{i}/{len(configurations)} {config['model']} {config['dtype']} "
                 f"xla {'on' if config['jit'] else 'off'}")
        entry: dict = {"config": config}
        if args.profile:
            entry["profile"] = _run_worker({**config, "kind": "profile"}, label)
            print(format_profile(entry), flush=True)
        else:
            entry["timing"] = _run_worker({**config, "kind": "time"}, label)
            if not args.no_memory and "error" not in entry["timing"]:
                entry["memory"] = {
                    v: _run_worker({**config, "kind": "memory", "variant": v},
                                   f"{label} memory {v}")
                    for v in VARIANTS
                }
        report["entries"].append(entry)
        report["wall_seconds"] = round(time.time() - started, 1)
        _write_json(out, report)  # after every configuration: partial results survive
    if not args.profile:
        print(format_table(report["entries"]))
    print(f"\n{len(configurations)} configuration(s) in {report['wall_seconds']:.0f} s; "
          f"saved {out}", flush=True)
    failed = [e for e in report["entries"] if "error" in e.get("timing", e.get("profile", {}))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
