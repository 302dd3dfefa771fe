"""Image folders (`--dataset folder`): the layout, class folders and every image checked up front.

`validate_image_folder` reads `data_dir/train/<class>/<image>` and
`data_dir/val/<class>/...` once, before any training, and returns a
`FolderInfo` (classes, counts, files); a bad folder is one `DataError` line
naming what to fix.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import warnings

import numpy as np

from quantens.errors import DataError, one_line

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "FolderInfo",
    "validate_image_folder",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

# what tf.io.decode_image reads (PIL names; MPO is a multi-picture JPEG)
_DECODABLE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"})

MAX_IMAGE_PIXELS = 89_478_485
"""The most pixels (width x height) an image of an image folder may have.

PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`, 1 GiB / 4 bytes /
3 channels), fixed here so that a changed PIL setting does not move it: the
input pipeline decodes a whole image before it crops, and holds it as float32
RGB, 12 bytes a pixel, so an image at the cap takes 1 GiB, and several are
decoded at once. Photos are far below it (a 24-megapixel camera: 24 million).
"""
_FOLDER_LAYOUT = "a folder with train/ and val/ subfolders, one subfolder per class in each"


@dataclasses.dataclass(frozen=True)
class FolderInfo:
    """An image folder checked by `validate_image_folder`: its classes and image files.

    `classes` are the class subfolder names of `train/` (the same as `val/`'s),
    sorted: a label is a position in it. `train_counts` and `val_counts` are
    the number of images per class, in that order; `files(split)` gives the
    paths and labels.

    ```python
    import quantens.data as qd

    info = qd.FolderInfo("/data", ("cat", "dog"), (1, 2), (1, 1),
                         train_files=("/data/train/cat/0.png", "/data/train/dog/0.png",
                                      "/data/train/dog/1.png"),
                         val_files=("/data/val/cat/0.png", "/data/val/dog/0.png"))
    assert info.num_classes == 2
    assert info.files("train")[1] == [0, 1, 1]
    ```
    """

    data_dir: str
    classes: tuple[str, ...]
    train_counts: tuple[int, ...]
    val_counts: tuple[int, ...]
    train_files: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    val_files: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def files(self, split: str) -> tuple[list[str], list[int]]:
        """(paths, labels) of `split` ("train" or "val"): class by class, files by name."""
        if split not in ("train", "val"):
            raise DataError(
                f"image folder {self.data_dir} has splits train and val, not {split!r}"
            )
        paths = self.train_files if split == "train" else self.val_files
        counts = self.train_counts if split == "train" else self.val_counts
        return list(paths), np.repeat(np.arange(len(counts)), counts).tolist()


# validate_image_folder's results: (real data_dir, class folders' mtimes) -> FolderInfo
_folder_cache: dict[tuple, FolderInfo] = {}
_FOLDER_CACHE_SIZE = 8


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symbolic links
    except OSError:  # a link loop, a permission problem
        return False


def _class_dirs(split_dir: str, root: str) -> dict[str, str]:
    """{class name: path} of the class subfolders of `split_dir` (see validate_image_folder)."""
    split_real = os.path.realpath(split_dir)
    found = {}
    with os.scandir(split_dir) as entries:
        for entry in entries:
            if not _is_dir(entry):
                continue
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                inside = _within(target, root) or _within(target, split_real)
                if not inside or _within(split_real, target):  # outside, or a cycle
                    continue
            found[entry.name] = entry.path
    return found


def _image_names(class_dir: str) -> list[str]:
    with os.scandir(class_dir) as entries:
        return sorted(
            e.name for e in entries
            if e.name.lower().endswith(IMAGE_EXTENSIONS) and not _is_dir(e)
        )


def _header_size(path: str) -> tuple[int, int] | None:
    """(width, height) in an image's header, read without PIL's decompression-bomb check.

    `Image.open` refuses images above twice PIL's limit before it returns
    their size; the format plugins it calls read the header alone.
    """
    from PIL import Image

    Image.init()
    with open(path, "rb") as f:
        prefix = f.read(16)
        for kind in Image.ID:
            factory, accept = Image.OPEN[kind]
            if accept and not accept(prefix):
                continue
            f.seek(0)
            try:
                return factory(f, path).size
            except Exception:  # another format's header: try the next plugin
                continue
    return None


def _too_large(size: tuple[int, int] | None) -> str | None:
    """Why an image of `size` is refused (above `MAX_IMAGE_PIXELS`), or None."""
    if size is None or size[0] * size[1] <= MAX_IMAGE_PIXELS:
        return None
    width, height = size
    return (
        f"is {width} x {height} pixels ({width * height:,}), above the cap of "
        f"{MAX_IMAGE_PIXELS:,} pixels of an image folder's images "
        "(quantens.data.MAX_IMAGE_PIXELS: decoding it would take more memory than training "
        "can spare; downscale it)"
    )


def _image_problem(path: str) -> str | None:
    """Why `path` is not an image TensorFlow can decode (its header), or None.

    An image above `MAX_IMAGE_PIXELS` is refused by its header's size.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            kind, size = image.format, image.size
            too_large = _too_large(size)
            if too_large:
                return too_large
            image.verify()
    except Image.DecompressionBombError as error:  # above twice PIL's limit
        try:
            size = _header_size(path)
        except OSError:
            size = None
        return _too_large(size) or (
            f"is above the cap of {MAX_IMAGE_PIXELS:,} pixels of an image folder's images "
            f"({one_line(error, 120)}; downscale it)")
    except Exception as error:  # PIL raises many kinds for a bad file
        return f"does not decode as an image ({type(error).__name__}: {one_line(error, 120)})"
    if kind not in _DECODABLE_FORMATS:
        return f"is a {kind} image, which TensorFlow does not decode (use JPEG, PNG, BMP or GIF)"
    return None


def _first_bad_image(paths: list[str], chunk: int = 256) -> tuple[str, str] | None:
    """(path, problem) of the first of `paths` that does not decode, checked by a thread pool."""

    def check(part):
        for path in part:
            problem = _image_problem(path)
            if problem:
                return path, problem
        return None

    from PIL import Image

    parts = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    # PIL warns about images above its limit: they are refused here, by name
    with warnings.catch_warnings(), concurrent.futures.ThreadPoolExecutor() as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for found in pool.map(check, parts):  # in order: the first bad file of the list
            if found:
                pool.shutdown(wait=False, cancel_futures=True)
                return found
    return None


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def validate_image_folder(data_dir: str) -> FolderInfo:
    """Checks an image folder once, up front, and returns its `FolderInfo`.

    The layout is `data_dir/train/<class>/<image>` and `data_dir/val/<class>/...`.
    Class subfolders are the directories in `train/` (and `val/`); a symbolic
    link to a directory counts only when it resolves inside `data_dir` (or
    inside the split folder it is in) and is not a cycle: a link to its split
    folder, to `data_dir` or to any of their ancestors is ignored, as is a link
    that leads outside. Images are the files of a class folder whose names end
    in one of `IMAGE_EXTENSIONS` (any case); other files and subfolders are
    ignored. Each image's header is read (PIL, in a thread pool): an image
    above `MAX_IMAGE_PIXELS` (width x height) is refused, before training
    decodes it. A folder
    checked before in this process is not read again while its class folders
    are unchanged (no file added, removed or renamed: their modification
    times), so `resolve` and `load` share one check.

    ```python
    import os, tempfile
    import numpy as np
    from PIL import Image
    import quantens.data as qd

    root = tempfile.mkdtemp()
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            os.makedirs(os.path.join(root, split, name))
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(
                os.path.join(root, split, name, "0.png"))
    info = qd.validate_image_folder(root)
    assert info.classes == ("cat", "dog") and info.train_counts == (1, 1)
    ```

    Raises:
        DataError: (one line) `train/` or `val/` missing; fewer than 2
            classes; `val/`'s classes differ from `train/`'s (the differences
            listed); a class folder without images (named); a file with an
            image extension that does not decode, or an image above
            `MAX_IMAGE_PIXELS` (the first one named, with its size and the cap).
    """
    dirs = _split_class_dirs(data_dir)
    classes = _same_classes(data_dir, dirs)
    watched = [os.path.join(data_dir, s) for s in ("train", "val")]
    watched += [dirs[s][c] for s in ("train", "val") for c in classes]
    key = (os.path.realpath(data_dir),
           tuple((path, os.stat(path).st_mtime_ns) for path in watched))
    if key in _folder_cache:
        return _folder_cache[key]
    files, counts = _list_images(dirs, classes)
    bad = _first_bad_image(files["train"] + files["val"])
    if bad:
        raise DataError(f"{bad[0]} {bad[1]}: fix or remove it")
    info = FolderInfo(
        data_dir, tuple(classes), tuple(counts["train"]), tuple(counts["val"]),
        train_files=tuple(files["train"]), val_files=tuple(files["val"]),
    )
    while len(_folder_cache) >= _FOLDER_CACHE_SIZE:
        _folder_cache.pop(next(iter(_folder_cache)))
    _folder_cache[key] = info
    return info


def _split_class_dirs(data_dir: str) -> dict[str, dict[str, str]]:
    """{"train": {class: path}, "val": {...}}; DataError when the layout is not there."""
    if not data_dir or not os.path.isdir(data_dir):
        raise DataError(f"--data-dir {data_dir!r} must be {_FOLDER_LAYOUT}")
    missing = [f"{s}/" for s in ("train", "val") if not os.path.isdir(os.path.join(data_dir, s))]
    if missing:
        raise DataError(
            f"--data-dir {data_dir} has no {' and no '.join(missing)}: it must be {_FOLDER_LAYOUT}"
        )
    root = os.path.realpath(data_dir)
    return {s: _class_dirs(os.path.join(data_dir, s), root) for s in ("train", "val")}


def _same_classes(data_dir: str, dirs: dict[str, dict[str, str]]) -> list[str]:
    """The sorted class names: at least 2, the same in train/ and val/ (else DataError)."""
    classes = sorted(dirs["train"])
    train_dir = os.path.join(data_dir, "train")
    if len(classes) < 2:
        raise DataError(
            f"{train_dir} has {len(classes)} class subfolder(s) ({_names(classes) or 'none'}): "
            "an image folder needs at least 2 classes, one subfolder each"
        )
    val_classes = sorted(dirs["val"])
    if val_classes != classes:
        missing_in_val = sorted(set(classes) - set(val_classes))
        only_in_val = sorted(set(val_classes) - set(classes))
        differences = [f"missing in val/: {_names(missing_in_val)}"] if missing_in_val else []
        differences += [f"only in val/: {_names(only_in_val)}"] if only_in_val else []
        raise DataError(
            f"{data_dir}: the class subfolders of val/ differ from train/'s "
            f"({'; '.join(differences)}): give train/ and val/ the same classes"
        )
    return classes


def _list_images(dirs: dict[str, dict[str, str]], classes: list[str]
                 ) -> tuple[dict[str, list[str]], dict[str, list[int]]]:
    """(files, counts) per split: each class's images by name; DataError for a class
    folder without images."""
    files, counts = {"train": [], "val": []}, {"train": [], "val": []}
    for split in ("train", "val"):
        for name in classes:
            class_dir = dirs[split][name]
            images = _image_names(class_dir)
            if not images:
                raise DataError(
                    f"{class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)}): add some, "
                    f"or remove class {name!r} from train/ and val/"
                )
            files[split] += [os.path.join(class_dir, image) for image in images]
            counts[split].append(len(images))
    return files, counts

