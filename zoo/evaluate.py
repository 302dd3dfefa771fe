"""Measure a pretrained tag's test accuracy per member; publish a run as a tag.

```bash
python -m zoo.evaluate digits_resnet_e digits          # table; exit 1 if it differs
python -m zoo.evaluate digits_resnet_e digits --publish /tmp/zoo/digits_resnet_e \\
    --command "python train.py --epochs 30 --deterministic --result-path /tmp/zoo/digits_resnet_e"
```

Evaluation is `quantens.QuantEnsemble(model, bit_widths).evaluate(...)` on the
dataset's evaluation split (the `test` split of `digits`) in batches of 256:
deterministic, so the registry holds exactly what this measures.

```python
from zoo.evaluate import evaluate_pretrained

print(evaluate_pretrained("digits_resnet_e", "digits"))  # {32: 1.0, 8: 0.99..., ...}
```
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import quantens  # noqa: E402,F401  (tf-keras before TensorFlow)
from quantens.argparsing import OneLineParser  # noqa: E402
from quantens.defaults import INPUT_PREPROCESSING  # noqa: E402
from quantens.errors import one_line  # noqa: E402
from quantens.layout import ResultDir  # noqa: E402
from zoo import pretrained  # noqa: E402

__all__ = ["EVAL_BATCH_SIZE", "accuracy_table", "evaluate", "evaluate_pretrained", "main", "publish"]

EVAL_BATCH_SIZE = 256


def evaluate(
    model,
    bit_widths: Sequence[int],
    dataset: str = "digits",
    data_dir: str | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    preprocessing: str = INPUT_PREPROCESSING,
) -> dict[int, float]:
    """Test accuracy of every member of `model` on the dataset's evaluation split.

    `preprocessing`: the inputs the model was trained on (`train.py
    --input-preprocessing`; the registry's tags: `standardized`).

    ```python
    import zoo
    from zoo.evaluate import evaluate

    model = zoo.create_model("digits_resnet_e", weights="digits")
    print(evaluate(model, (32, 8, 4, 2, 1), "digits"))
    ```
    """
    import quantens.data as qd

    spec = qd.resolve(dataset, data_dir)
    ensemble = quantens.QuantEnsemble(model, bit_widths)
    ensemble.compile()
    test = qd.load(dataset, spec.test_split, batch_size, data_dir=data_dir,
                   preprocessing=preprocessing)
    logs = ensemble.evaluate(test, return_dict=True, verbose=0)
    return {int(b): float(logs[f"accuracy_{b}"]) for b in ensemble.bit_widths}


def evaluate_pretrained(
    name: str, tag: str, data_dir: str | None = None, weights: str | None = None
) -> dict[int, float]:
    """Accuracy per member of a tag, loaded as users load it (download, verify, load).

    With `weights`, that local file is evaluated in the tag's architecture
    instead of the registered one.

    ```python
    from zoo.evaluate import evaluate_pretrained

    accuracy = evaluate_pretrained("digits_resnet_e", "digits")
    ```
    """
    config = pretrained.pretrained_config(name, tag)
    if weights is None:
        model = pretrained.create_pretrained(name, tag)
    else:
        from quantens.results import load_weights

        model = pretrained.build_model(name, tag)
        load_weights(model, weights)
    return evaluate(model, config.bit_widths, config.dataset, data_dir)


def accuracy_table(
    registered: Mapping[int, float], measured: Mapping[int, float]
) -> str:
    """Registered and measured accuracy per bit-width, one row each."""
    lines = ["bits   registered   measured", "----   ----------   --------"]
    for b in registered:
        mark = "" if measured.get(b) == registered[b] else "   <- differs"
        lines.append(f"{b:>4}   {registered[b]:>10.4f}   {measured.get(b, float('nan')):>8.4f}{mark}")
    return "\n".join(lines)


def publish(
    result_dir: str,
    name: str,
    tag: str,
    command: str,
    description: str = "",
    data_dir: str | None = None,
    weights_file: str = ResultDir.WEIGHTS,
    weights_dir: str | None = None,
) -> pretrained.PretrainedConfig:
    """Registers a `train.py` result directory as tag `tag` of model `name`.

    Copies its weights into `<weights_dir>/<name>-<tag>-<sha256[:8]>.weights.h5`,
    measures the accuracy per member with `evaluate`, and writes the
    registry entry (architecture flags from the run's config.json) into
    `<weights_dir>/pretrained.json`. `weights_dir` defaults to the package's
    `zoo/weights` (`pretrained.WEIGHTS_DIR`), the registry users load from.

    ```python
    import os, tempfile
    import zoo
    from quantens.results import save_weights, write_json
    from zoo.evaluate import publish

    run = tempfile.mkdtemp()  # what `train.py --result-path RUN` leaves, in small
    model = zoo.create_model("digits_resnet_e", width=8, bit_widths=(32, 1))
    save_weights(model, os.path.join(run, "ensemble.weights.h5"))
    write_json(os.path.join(run, "config.json"), {
        "model": "digits_resnet_e", "width": 8, "bit_widths": [32, 1], "target_bits": 1,
        "dataset": "digits", "input_shape": [8, 8, 1], "num_classes": 10})
    entry = publish(run, "digits_resnet_e", "untrained", command="(an example)",
                    weights_dir=tempfile.mkdtemp())  # not the package's zoo/weights
    assert sorted(entry.accuracy) == [1, 32] and entry.flags["width"] == 8
    ```
    """
    import zoo
    from quantens.defaults import ARCHITECTURE_FLAGS
    from quantens.results import atomic_path, load_weights, read_json

    weights_dir = weights_dir or pretrained.WEIGHTS_DIR
    registry_path = os.path.join(weights_dir, "pretrained.json")
    config = read_json(ResultDir(result_dir).config)
    if config.get("model") != name:
        raise ValueError(f"{result_dir} trained {config.get('model')!r}, not {name!r}")
    preprocessing = config.get("input_preprocessing") or INPUT_PREPROCESSING
    if preprocessing != INPUT_PREPROCESSING:  # a tag's users feed standardised images
        raise ValueError(
            f"{result_dir} was trained with --input-preprocessing {preprocessing}; the "
            f"registry's tags take {INPUT_PREPROCESSING} inputs: publish a run trained on them"
        )
    source = os.path.join(result_dir, weights_file)
    if not os.path.isfile(source):
        raise ValueError(f"{source}: no such file")
    flags = {k: config[k] for k in ARCHITECTURE_FLAGS if k in config}
    digest = pretrained.sha256sum(source)
    file = f"{name}-{tag}-{digest[:8]}.weights.h5"
    target = os.path.join(weights_dir, file)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    model = zoo.create_model_from_flags(flags, config["input_shape"], config["num_classes"])
    load_weights(model, target)
    accuracy = evaluate(model, flags["bit_widths"], config["dataset"], data_dir)
    entry = pretrained.PretrainedConfig(
        model=name, tag=tag, file=file, sha256=digest, size=os.path.getsize(target),
        dataset=config["dataset"], input_shape=tuple(config["input_shape"]),
        num_classes=int(config["num_classes"]), flags=flags, accuracy=accuracy,
        target_bits=int(config["target_bits"]), command=command, description=description,
    )
    registry = pretrained.read_registry(registry_path)
    old = registry.get(name, {}).get(tag)
    registry.setdefault(name, {})[tag] = entry
    pretrained.write_registry(registry, registry_path)
    in_use = {c.file for tags in registry.values() for c in tags.values()}
    if old is not None and old.file not in in_use:
        os.remove(os.path.join(weights_dir, old.file))
    return entry


def _check_before_tensorflow(parser: OneLineParser, args: argparse.Namespace):
    """The checks that need no TensorFlow; returns the tag's registry entry (None with
    --publish). A bad argument ends here with one line and exit code 2."""
    if args.weights is not None and not os.path.isfile(args.weights):
        parser.fail(f"--weights {args.weights}: no such file")
    if not args.publish:
        try:
            return pretrained.pretrained_config(args.model, args.tag)
        except ValueError as error:
            parser.fail(one_line(error, limit=1000))
    if not args.command:
        parser.error("--publish needs --command: the command that trained the run")
    run = ResultDir(args.publish)
    for path in (run.config, run.weights):
        if not os.path.isfile(path):
            parser.fail(f"--publish {args.publish}: no {os.path.basename(path)} in it "
                        "(the --result-path of a finished train.py run)")
    return None


def main(argv: list[str] | None = None) -> int:
    """`python -m zoo.evaluate MODEL TAG` (`quantens-evaluate`): exit 0 when the measurement
    matches the registry. Bad arguments end with one line `prog: error: ...` and exit
    code 2, checked before TensorFlow loads where they can be."""
    # `quantens-evaluate` when started as that console script (setup.py), as the
    # command line's `quantens.cli.program_name` decides (the zoo does not import it)
    script = os.path.basename(sys.argv[0]).removesuffix(".exe")
    parser = OneLineParser(
        prog="quantens-evaluate" if script == "quantens-evaluate" else "python -m zoo.evaluate",
        description="Evaluate a pretrained tag per member (or publish a run as a tag).",
    )
    parser.add_argument("model", help="zoo model, e.g. digits_resnet_e")
    parser.add_argument("tag", help="pretrained tag, e.g. digits")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    parser.add_argument("--weights", default=None,
                        help="evaluate this local weights file in the tag's architecture")
    parser.add_argument("--publish", metavar="RESULT_DIR", default=None,
                        help="register RESULT_DIR/ensemble.weights.h5 as this tag")
    parser.add_argument("--command", default=None, help="with --publish: the training command")
    parser.add_argument("--description", default="", help="with --publish: one line")
    args = parser.parse_args(argv)
    config = _check_before_tensorflow(parser, args)
    from quantens.startup import load_tensorflow

    load_tensorflow()  # quietly: its start-up lines would bury a one-line error
    try:
        if args.publish:
            entry = publish(args.publish, args.model, args.tag, args.command,
                            args.description, args.data_dir)
            print(f"registered {args.model}.{args.tag}: {entry.file} ({entry.size} bytes)")
            print(accuracy_table(entry.accuracy, entry.accuracy))
            return 0
        measured = evaluate_pretrained(args.model, args.tag, args.data_dir, args.weights)
    except (ValueError, OSError) as error:
        parser.fail(one_line(error, limit=1000))
    print(f"{args.model}.{args.tag} on {config.dataset} (test split)")
    print(accuracy_table(config.accuracy, measured))
    same = measured == dict(config.accuracy)
    print("matches the registry" if same else "DIFFERS from the registry")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
