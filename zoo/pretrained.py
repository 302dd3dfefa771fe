"""Pretrained weights of the zoo: a registry of tags, verified downloads, loading.

Like larq-zoo and timm, each architecture has named *tags* of pretrained
weights (`weights="digits"`). A tag records everything needed to rebuild and
trust it: the weights file and its sha256, the dataset, input shape and
classes, the `train.py` flags that define the architecture (bit-widths and
quantizer settings, `quantens.defaults.ARCHITECTURE_FLAGS`), the test accuracy of
every member, and the command that trained it. The registry is
`zoo/weights/pretrained.json`.

Weights are downloaded with `tf.keras.utils.get_file` (progress bar, sha256)
into a cache, `$QUANTENS_HOME/weights` (default `~/.keras/quantens/weights`),
from `$QUANTENS_WEIGHTS_URL/<file>`. The default base URL is a `file://` URL of
the weight files shipped in this package, so the shipped tags load through the
same path with no network; point `QUANTENS_WEIGHTS_URL` at a mirror
(`https://...`, `file:///mnt/mirror`) for other files or air-gapped sites. A
file is moved into the cache only after its size and sha256 are verified.

```python
from zoo import pretrained

print(pretrained.list_pretrained())  # ['digits_resnet_e.digits', 'digits_resnet_e.digits_w8']
model = pretrained.create_pretrained("digits_resnet_e", "digits")
print(pretrained.pretrained_config("digits_resnet_e", "digits").accuracy)
```

`python -m zoo.pretrained` lists the tags; `--markdown` prints the README table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import hashlib
import http.client
import json
import os
import pathlib
import shutil
import sys
import tempfile
import warnings
from collections.abc import Mapping

from quantens.errors import DownloadError, PretrainedError, one_line  # re-exported

__all__ = [
    "DEFAULT_HOME",
    "HOME_ENV",
    "REGISTRY_PATH",
    "URL_ENV",
    "WEIGHTS_DIR",
    "DownloadError",
    "PretrainedConfig",
    "PretrainedError",
    "build_model",
    "cache_dir",
    "check_architecture",
    "create_pretrained",
    "download",
    "is_tag",
    "list_pretrained",
    "load_pretrained",
    "load_weights_into",
    "main",
    "markdown_table",
    "pretrained_config",
    "read_registry",
    "sha256sum",
    "weights_url",
    "write_registry",
]

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
REGISTRY_PATH = os.path.join(WEIGHTS_DIR, "pretrained.json")
HOME_ENV = "QUANTENS_HOME"
URL_ENV = "QUANTENS_WEIGHTS_URL"
DEFAULT_HOME = os.path.join("~", ".keras", "quantens")

# Layer-config keys that do not change what the weights compute.
_IGNORED_CONFIG_KEYS = ("name", "trainable", "dtype", "synchronized", "momentum")



@dataclasses.dataclass(frozen=True)
class PretrainedConfig:
    """One pretrained tag of a zoo model (an entry of `zoo/weights/pretrained.json`).

    Attributes:
        model: the zoo architecture, e.g. `digits_resnet_e`.
        tag: the tag's name, e.g. `digits`.
        file: the weights file name (under the base URL and in the cache).
        sha256: hex digest of the file.
        size: the file's size in bytes.
        dataset: the TFDS dataset it was trained on.
        input_shape, num_classes: the model's input and output.
        flags: the `train.py` flags that define the architecture
            (`quantens.defaults.ARCHITECTURE_FLAGS`), as in the run's config.json.
        accuracy: test accuracy per bit-width (the dataset's evaluation split),
            exactly as `python -m zoo.evaluate MODEL TAG` measures it.
        target_bits: the run's `--target-bits`.
        command: the command that trained it.
        description: one line about it.

    ```python
    from zoo.pretrained import pretrained_config

    config = pretrained_config("digits_resnet_e", "digits")
    assert config.bit_widths == (32, 8, 4, 2, 1) and config.dataset == "digits"
    ```
    """

    model: str
    tag: str
    file: str
    sha256: str
    size: int
    dataset: str
    input_shape: tuple[int, ...]
    num_classes: int
    flags: Mapping
    accuracy: Mapping[int, float]
    target_bits: int
    command: str
    description: str = ""

    @property
    def bit_widths(self) -> tuple[int, ...]:
        return tuple(int(b) for b in self.flags["bit_widths"])

    @property
    def url(self) -> str:
        """Where the file is downloaded from (`$QUANTENS_WEIGHTS_URL/<file>`)."""
        return f"{weights_url().rstrip('/')}/{self.file}"

    @classmethod
    def from_dict(cls, model: str, tag: str, entry: Mapping) -> PretrainedConfig:
        return cls(
            model=model,
            tag=tag,
            file=entry["file"],
            sha256=entry["sha256"].lower(),
            size=int(entry["size"]),
            dataset=entry["dataset"],
            input_shape=tuple(int(d) for d in entry["input_shape"]),
            num_classes=int(entry["num_classes"]),
            flags=dict(entry["flags"]),
            accuracy={int(b): float(a) for b, a in entry["accuracy"].items()},
            target_bits=int(entry["target_bits"]),
            command=entry["command"],
            description=entry.get("description", ""),
        )

    def to_dict(self) -> dict:
        """The registry entry (JSON types; accuracy keyed by the bit-width as a string)."""
        return {
            "description": self.description,
            "file": self.file,
            "sha256": self.sha256,
            "size": self.size,
            "dataset": self.dataset,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "flags": dict(self.flags),
            "target_bits": self.target_bits,
            "accuracy": {str(b): float(a) for b, a in self.accuracy.items()},
            "command": self.command,
        }


# -------------------------------------------------------------------- registry


def read_registry(path: str = REGISTRY_PATH) -> dict[str, dict[str, PretrainedConfig]]:
    """The registry file: model name -> tag -> `PretrainedConfig`."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    return {
        model: {tag: PretrainedConfig.from_dict(model, tag, entry) for tag, entry in tags.items()}
        for model, tags in raw.items()
    }


def write_registry(registry: Mapping[str, Mapping[str, PretrainedConfig]],
                   path: str = REGISTRY_PATH) -> None:
    """Writes the registry whole (temporary name, then rename), sorted by model and tag."""
    from quantens.results import write_json

    write_json(path, {
        model: {tag: registry[model][tag].to_dict() for tag in sorted(registry[model])}
        for model in sorted(registry)
    })


def list_pretrained(pattern: str = "*") -> list[str]:
    """Registered tags as `model.tag`, those matching a shell-style pattern.

    ```python
    from zoo.pretrained import list_pretrained

    assert "digits_resnet_e.digits" in list_pretrained("digits_*")
    ```
    """
    names = [f"{model}.{tag}" for model, tags in read_registry().items() for tag in tags]
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def is_tag(name: str, weights: str) -> bool:
    """Whether `weights` names a registered tag of model `name` (and not a file path)."""
    return not _looks_like_path(weights) and weights in read_registry().get(name, {})


def pretrained_config(name: str, tag: str) -> PretrainedConfig:
    """The registry entry of `tag` of model `name`; an unknown one lists the known tags.

    ```python
    from zoo.pretrained import pretrained_config

    print(pretrained_config("digits_resnet_e", "digits").accuracy)  # {32: 1.0, 8: ...}
    ```
    """
    registry = read_registry()
    tags = registry.get(name, {})
    if tag not in tags:
        known = ", ".join(sorted(tags)) or "none"
        others = ", ".join(list_pretrained()) or "none"
        raise PretrainedError(
            f"unknown pretrained tag {tag!r} for model {name!r}: its tags are {known} "
            f"(all tags: {others})"
        )
    return tags[tag]


# ------------------------------------------------------------------- downloads


def weights_url() -> str:
    """The base URL of weight files: `$QUANTENS_WEIGHTS_URL`, else this package's files.

    ```python
    from zoo.pretrained import weights_url

    print(weights_url())  # file:///.../zoo/weights
    ```
    """
    return os.environ.get(URL_ENV) or pathlib.Path(WEIGHTS_DIR).resolve().as_uri()


def cache_dir() -> str:
    """Where downloaded weights are kept: `$QUANTENS_HOME/weights` (~/.keras/quantens)."""
    home = os.environ.get(HOME_ENV) or DEFAULT_HOME
    return os.path.join(os.path.abspath(os.path.expanduser(home)), "weights")


def sha256sum(path: str) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _shipped_instead(name: str, tag: str, config: PretrainedConfig, directory: str,
                     error: OSError) -> str:
    """The weights file shipped in the package when the cache cannot be written."""
    shipped = os.path.join(WEIGHTS_DIR, config.file)
    if os.path.isfile(shipped) and _problem(shipped, config) is None:
        warnings.warn(
            f"cannot write the weights cache {directory} ({error.strerror or error}); "
            f"loading {name} {tag!r} from the file shipped with quantens ({shipped}); set "
            f"{HOME_ENV} to a writable folder to cache downloads",
            stacklevel=3,
        )
        return shipped
    raise PretrainedError(
        f"cannot write the weights cache {directory} ({error.strerror or error}): set "
        f"{HOME_ENV} to a writable folder"
    ) from error


def _problem(path: str, config: PretrainedConfig) -> str | None:
    """Why the file at `path` is not the tag's file, or None when it is."""
    if not os.path.isfile(path):
        return "no file was received"
    size = os.path.getsize(path)
    if size < config.size:
        return f"truncated download: received {size} of {config.size} bytes"
    digest = sha256sum(path)
    if digest != config.sha256:
        return (
            f"sha256 mismatch: the file has {digest}, the registry expects {config.sha256} "
            "(a corrupt or different file)"
        )
    return None


def download(name: str, tag: str) -> str:
    """The local path of a tag's weights file, downloaded and verified on first use.

    A cached file is used when its sha256 matches. Otherwise the file is
    fetched from `config.url` with `tf.keras.utils.get_file` into a temporary
    folder in the cache and moved into place only after its size and sha256
    are verified; on any failure `DownloadError` says why and nothing is
    left in the cache.

    ```python
    from zoo.pretrained import download

    path = download("digits_resnet_e", "digits")  # ~/.keras/quantens/weights/...
    ```
    """
    config = pretrained_config(name, tag)
    directory = cache_dir()
    target = os.path.join(directory, config.file)
    if os.path.isfile(target):
        if _problem(target, config) is None:
            return target
        with contextlib.suppress(FileNotFoundError):  # stale or corrupt: fetch it again
            os.remove(target)
    try:
        os.makedirs(directory, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".download-", dir=directory)
    except OSError as error:
        return _shipped_instead(name, tag, config, directory, error)
    url = config.url
    try:
        received = os.path.join(tmp, config.file)
        try:
            import tensorflow as tf

            tf.keras.utils.get_file(
                fname=config.file, origin=url, file_hash=config.sha256,
                hash_algorithm="sha256", cache_dir=tmp, cache_subdir="",
            )
        except Exception as error:
            # get_file reports a bad hash as a ValueError; say what was wrong
            problem = _problem(received, config) if os.path.isfile(received) else None
            if isinstance(error, http.client.IncompleteRead):  # newer Pythons raise it
                problem = (
                    "truncated download: the server sent less than its Content-Length "
                    f"({config.size} bytes expected)"
                )
            raise DownloadError(
                f"cannot download {name} {tag!r} weights from {url}: "
                f"{problem or one_line(error)}; nothing was cached (set {URL_ENV} to a "
                "mirror's base URL)"
            ) from None
        problem = _problem(received, config)
        if problem is not None:
            raise DownloadError(
                f"cannot download {name} {tag!r} weights from {url}: {problem}; "
                "nothing was cached"
            )
        os.replace(received, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------- loading


def _architecture(model) -> dict[str, tuple[str, dict]]:
    """Layer name -> (class, config without keys that do not change the weights' use)."""
    import tensorflow as tf

    def normal(value):
        if isinstance(value, dict):
            return {k: normal(v) for k, v in value.items() if k not in _IGNORED_CONFIG_KEYS}
        if isinstance(value, (list, tuple)):
            return [normal(v) for v in value]
        return value

    return {
        layer.name: (type(layer).__name__, normal(json.loads(json.dumps(
            layer.get_config(), default=str
        ))))
        for layer in model.layers
        if not isinstance(layer, tf.keras.layers.InputLayer)
    }


def _differences(mine, theirs, path: str = "") -> list[str]:
    """Leaf paths where two configs differ: `input_quantizer.config.method='det_sign' (...)`."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        return [
            d for k in sorted(set(mine) | set(theirs))
            for d in _differences(mine.get(k), theirs.get(k), f"{path}.{k}" if path else k)
        ]
    if mine != theirs:
        return [f"{path}={mine!r} (tag: {theirs!r})"]
    return []


def build_model(name: str, tag: str):
    """A fresh (untrained) model with the architecture of a tag: its builder (the zoo's
    registry) called with the arguments of the tag's flags."""
    from zoo.flags import builder_kwargs
    from zoo.registry import model_builder

    config = pretrained_config(name, tag)
    builder = model_builder(name)
    if builder is None:
        raise PretrainedError(f"{name!r} is not a registered zoo architecture: its tag "
                              f"{tag!r} cannot be built")
    return builder(**builder_kwargs({**config.flags, "model": name}, config.input_shape,
                                    config.num_classes))


def check_architecture(model, name: str, tag: str) -> None:
    """Raises PretrainedError unless `model` has exactly the architecture of the tag.

    Keras loads weights into a model with fewer members or a shared BN without
    complaint, and quantizer settings have no weights at all: this compares
    the input shape and every layer's configuration with the tag's own model.
    """
    config = pretrained_config(name, tag)
    wanted = ", ".join(
        f"{k}={v}" for k, v in config.flags.items() if k != "model" and v not in (None, False)
    )
    hint = f"build it with zoo.pretrained.create_pretrained({name!r}, {tag!r}) ({wanted})"
    shape = tuple(model.input_shape[1:])
    if shape != config.input_shape:
        raise PretrainedError(
            f"{name} {tag!r} weights expect input shape {config.input_shape}, the model has "
            f"{shape}; {hint}"
        )
    mine, theirs = _architecture(model), _architecture(build_model(name, tag))
    if list(mine) != list(theirs):
        missing = sorted(set(theirs) - set(mine)) or sorted(set(mine) - set(theirs))
        raise PretrainedError(
            f"the model's layers differ from {name} {tag!r} (e.g. {', '.join(missing[:3])}); "
            f"{hint}"
        )
    for layer, (kind, cfg) in theirs.items():
        other_kind, other = mine[layer]
        differences = _differences(other, cfg)
        if kind != other_kind or differences:
            detail = ", ".join(differences[:2]) or f"{other_kind} (tag: {kind})"
            raise PretrainedError(
                f"layer {layer} differs from {name} {tag!r}: {detail}; {hint}"
            )


def load_pretrained(model, name: str, tag: str, strict: bool = True):
    """Loads the weights of `tag` into `model` (downloading them on first use).

    With `strict` (the default) the model must have the tag's architecture
    (`check_architecture`); `strict=False` loads whatever Keras accepts, e.g.
    to fine-tune a subset of the members.

    ```python
    import zoo
    from zoo.pretrained import load_pretrained

    model = zoo.create_model("digits_resnet_e")
    load_pretrained(model, "digits_resnet_e", "digits")
    ```
    """
    if strict:
        check_architecture(model, name, tag)
    path = download(name, tag)
    from quantens.results import load_weights

    try:
        load_weights(model, path)
    except Exception as error:  # Keras' ValueError on shape mismatch, h5py's OSError
        raise PretrainedError(
            f"cannot load {name} {tag!r} weights ({path}) into the model: {one_line(error)}"
        ) from None
    return model


def _looks_like_path(weights: str) -> bool:
    return os.sep in weights or weights.endswith((".h5", ".keras", ".params"))


def load_weights_into(model, name: str, weights: str | None):
    """What a zoo builder does with its `weights` argument: a file path or a tag.

    A tag is loaded with `load_pretrained` (architecture checked); a file
    with `quantens.results.load_weights`.

    ```python
    import zoo
    from zoo.pretrained import load_weights_into

    model = zoo.create_model("digits_resnet_e")
    load_weights_into(model, "digits_resnet_e", "digits")
    ```
    """
    if weights is None:
        return model
    weights = os.fspath(weights)
    if os.path.isfile(weights):
        from quantens.results import load_weights

        load_weights(model, weights)
        return model
    if _looks_like_path(weights):
        raise PretrainedError(f"weights {weights}: no such file")
    return load_pretrained(model, name, weights)


def create_pretrained(name: str, tag: str):
    """The model of a tag, built with its architecture flags and its weights loaded.

    ```python
    from zoo.pretrained import create_pretrained

    model = create_pretrained("digits_resnet_e", "digits")
    ```
    """
    model = build_model(name, tag)
    return load_pretrained(model, name, tag, strict=False)


# --------------------------------------------------------------- documentation


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _flag(key: str, value) -> str:
    flag = f"--{key.replace('_', '-')}"
    return flag if value is True else f"{flag} {value}"


def markdown_table(registry: Mapping[str, Mapping[str, PretrainedConfig]] | None = None) -> str:
    """The zoo table of README.md, generated from the registry.

    ```python
    from zoo.pretrained import markdown_table

    print(markdown_table())
    ```
    """
    registry = read_registry() if registry is None else registry
    from quantens.defaults import ARCHITECTURE_DEFAULTS, default_weight_quantization

    lines = [
        "| model | tag | dataset | bit-widths | other train.py flags | "
        "test accuracy % per member | size |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in sorted(registry):
        defaults = {**ARCHITECTURE_DEFAULTS,
                    "weight_quantization": default_weight_quantization(model)}
        for tag in sorted(registry[model]):
            c = registry[model][tag]
            accuracy = " · ".join(f"{b}: {_percent(c.accuracy[b])}" for b in c.bit_widths)
            bits = " ".join(map(str, c.bit_widths))
            flags = " ".join(
                _flag(k, v) for k, v in c.flags.items()
                if k not in ("model", "bit_widths") and v != defaults.get(k)
            )
            lines.append(
                f"| `{model}` | `{tag}` | {c.dataset} | {bits} | {f'`{flags}`' if flags else '-'} "
                f"| {accuracy} | {c.size / 1e6:.1f} MB |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m zoo.pretrained [PATTERN] [--markdown]`: list the registered tags."""
    parser = argparse.ArgumentParser(
        prog="python -m zoo.pretrained", description="List the zoo's pretrained tags."
    )
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style, e.g. 'digits_*'")
    parser.add_argument("--markdown", action="store_true",
                        help="print the README table of every tag")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table())
        return 0
    for entry in list_pretrained(args.pattern):
        model, tag = entry.split(".", 1)
        c = pretrained_config(model, tag)
        accuracy = " ".join(f"{b}:{c.accuracy[b]:.4f}" for b in c.bit_widths)
        print(f"{entry:32} {c.dataset:10} {accuracy}  {c.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
