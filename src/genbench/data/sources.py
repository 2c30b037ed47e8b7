"""Every data source becomes one cached ``datasets.Dataset`` per split.

Columns: ``image`` (``Array3D`` uint8, channels-first at ``data.image_size``) and, where the source has
them, ``label`` (``ClassLabel`` carrying the class names). Prepared splits are saved as Arrow under the
cache dir, keyed by everything that changes them, so the second run reads them straight back.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from genbench.data import idx
from genbench.errors import GenbenchError
from genbench.files import atomic_folder, check_writable

SUPPORTED_IMAGE_SIZES = (28, 32, 64)
SOURCES = ("fashion_mnist", "hf", "imagefolder")
RESIZE_MODES = ("auto", "pad", "resize")
# PIL's errors for a file it cannot decode (UnidentifiedImageError and truncated data are OSErrors)
UNREADABLE_IMAGE = (OSError, SyntaxError, Image.DecompressionBombError)
MIN_IMAGES_TO_SPLIT = 5  # a source without a test split gives a fifth of its images to one (at least one image)
FASHION_HUB_NAME = "zalando-datasets/fashion_mnist"
datasets.disable_progress_bars()


@dataclass(frozen=True)
class SourceSpec:
    """What to read and how to shape it; the cache key is built from these fields."""

    source: str  # fashion_mnist | hf | imagefolder
    root: str | None = None
    name: str | None = None
    image_key: str = "image"
    label_key: str | None = "label"
    train_split: str = "train"
    test_split: str = "test"
    image_size: int = 28
    channels: int | None = None
    resize: str = "auto"  # auto (pad when growing by a few pixels, else resize) | pad | resize
    test_size: int = 10000  # carved from train when a source has no test split

    def __post_init__(self) -> None:
        """Checked when the data module is built, before anything is read."""
        if self.source not in SOURCES:
            raise GenbenchError(f"unknown data source '{self.source}'; expected {', '.join(SOURCES)}")
        if self.image_size not in SUPPORTED_IMAGE_SIZES:
            raise GenbenchError(
                f"data.image_size={self.image_size} cannot be used by genbench's networks; expected one of {SUPPORTED_IMAGE_SIZES}"
            )
        if self.channels not in (None, 1, 3):
            raise GenbenchError(f"data.channels={self.channels}; expected null (keep), 1 or 3")
        if self.resize not in RESIZE_MODES:
            raise GenbenchError(f"data.resize={self.resize}; expected {', '.join(RESIZE_MODES)}")

    def key(self, extra: str = "") -> str:
        return hashlib.sha256((json.dumps(self.__dict__, sort_keys=True) + extra).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- shaping ----------------------------------------------


def _fit(array: np.ndarray, size: int, mode: str) -> np.ndarray:
    """One (H, W, C) uint8 image to (C, size, size): pad with the corner colour, or resize bilinearly."""
    h, w, c = array.shape
    if (h, w) == (size, size):
        return array.transpose(2, 0, 1)
    pad = mode == "pad" or (mode == "auto" and h == w and size > h and size - h <= 8)
    if pad:
        if h > size or w > size:
            raise GenbenchError(f"cannot pad {h}x{w} images down to data.image_size={size}; use data.resize=resize")
        top, left = (size - h) // 2, (size - w) // 2
        out = np.empty((size, size, c), dtype=np.uint8)
        out[...] = array[0, 0]
        out[top : top + h, left : left + w] = array
        return out.transpose(2, 0, 1)
    pil = Image.fromarray(array[:, :, 0] if c == 1 else array)
    resized = np.asarray(pil.resize((size, size), Image.BILINEAR), dtype=np.uint8)
    return (resized[:, :, None] if c == 1 else resized).transpose(2, 0, 1)


def _to_array(image: object, channels: int | None, where: str) -> np.ndarray:
    """A PIL image (or array) to (H, W, C) uint8, converting channels only when asked to."""
    if isinstance(image, Image.Image):
        if channels == 1:
            image = image.convert("L")
        elif channels == 3 or image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        array = np.asarray(image, dtype=np.uint8)
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise GenbenchError(f"{where}: images are {array.dtype}; expected uint8 pixels or PIL images")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise GenbenchError(f"{where}: image of shape {array.shape}; expected (H, W), (H, W, 1) or (H, W, 3)")
    return array


def shape_image(image: object, channels: int | None, size: int, resize: str, where: str) -> np.ndarray:
    """One image as the data module stores it: (C, size, size) uint8, channels converted to ``channels`` (grey or
    RGB; None keeps them), padded or resized to ``size`` by ``resize`` (``data.resize``). Image prompts
    (:mod:`genbench.prompts`) read their images with it, so a prompt looks like the data the model learned."""
    return _fit(_to_array(image, channels, where), size, resize)


def _prepare(images, labels, class_names, spec: SourceSpec, where: str) -> datasets.Dataset:
    """Shape every image, refusing mixed sizes or channel counts, and build the Arrow dataset."""
    arrays = [_to_array(im, spec.channels, where) for im in images]
    if not arrays:
        raise GenbenchError(f"{where}: no images found")
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise GenbenchError(
            f"{where}: mixed image sizes or channel counts {shapes[:4]}; expected one (H, W, C) "
            "(set data.channels=1 or 3 to convert channels)"
        )
    fitted = np.stack([_fit(a, spec.image_size, spec.resize) for a in arrays])
    columns = {"image": fitted}
    features = {"image": datasets.Array3D(shape=fitted.shape[1:], dtype="uint8")}
    if labels is not None:
        columns["label"] = np.asarray(labels, dtype=np.int64)
        names = class_names or [str(i) for i in range(int(columns["label"].max()) + 1)]
        features["label"] = datasets.ClassLabel(names=list(names))
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


# ---------------------------------------------------------------- sources ----------------------------------------------


def _fashion_mnist(spec: SourceSpec) -> dict[str, datasets.Dataset]:
    root = idx.find_root(spec.root)
    if root is not None:
        out = {}
        for split in ("train", "test"):
            images, labels = idx.load_split(root, split)
            out[split] = _prepare(images, labels, idx.CLASS_NAMES, spec, f"{root} ({split})")
        return out
    try:
        hub = datasets.load_dataset(FASHION_HUB_NAME)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not reachable"; we say what to do instead
        raise GenbenchError(
            "Fashion-MNIST not found: pass data.root=DIR holding its four IDX .gz files, or install Debian's "
            f"'dataset-fashion-mnist' package ({idx.DEBIAN_ROOT}), or go online so that the hub dataset "
            f"'{FASHION_HUB_NAME}' can be fetched ({type(exc).__name__})"
        ) from exc
    spec = SourceSpec(**{**spec.__dict__, "image_key": "image", "label_key": "label"})
    return _from_dataset_dict(hub, spec, FASHION_HUB_NAME)


def _load_hf(spec: SourceSpec) -> datasets.DatasetDict:
    name = spec.name
    if not name:
        raise GenbenchError("data=hf needs data.name: a hub dataset name, a save_to_disk folder or parquet file(s)")
    path = Path(name).expanduser()
    try:
        if path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "dataset_info.json")):
            loaded = datasets.load_from_disk(str(path))
            return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)
        if path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
            files = {p.stem.split("-")[0]: str(p) for p in sorted(path.glob("*.parquet"))} if path.is_dir() else str(path)
            return datasets.load_dataset("parquet", data_files=files)
        if path.exists():
            raise GenbenchError(f"data.name={name} exists but is neither a save_to_disk folder nor parquet file(s)")
        return datasets.load_dataset(name)
    except GenbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for "cannot get this dataset"
        raise GenbenchError(f"cannot load HF dataset '{name}': {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc


def _load_imagefolder(spec: SourceSpec) -> datasets.DatasetDict:
    if not spec.root:
        raise GenbenchError("data=imagefolder needs data.root: a folder of images (class subfolders optional)")
    root = Path(spec.root).expanduser()
    if not root.is_dir():
        raise GenbenchError(f"data.root {root} does not exist or is not a folder (expected a folder of images)")
    try:
        return datasets.load_dataset("imagefolder", data_dir=str(root))
    except Exception as exc:  # noqa: BLE001
        raise GenbenchError(f"cannot read image folder {root}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc


def _from_dataset_dict(dd: datasets.DatasetDict, spec: SourceSpec, where: str) -> dict[str, datasets.Dataset]:
    if spec.train_split not in dd:
        raise GenbenchError(f"{where}: no '{spec.train_split}' split (found {sorted(dd)}); set data.train_split")
    train = dd[spec.train_split]
    for key in (spec.image_key,):
        if key not in train.column_names:
            raise GenbenchError(f"{where}: no column '{key}' (found {train.column_names}); set data.image_key")
    label_key = spec.label_key if spec.label_key and spec.label_key in train.column_names else None
    if spec.test_split in dd:
        test = dd[spec.test_split]
    else:
        if len(train) < MIN_IMAGES_TO_SPLIT:
            raise GenbenchError(
                f"{where}: {len(train)} image(s); at least {MIN_IMAGES_TO_SPLIT} are needed, since a fifth of them is "
                f"held out as the test split (or give the data a '{spec.test_split}' split)"
            )
        # No test split: carve a seeded one from train so evaluation still has held-out references.
        n_test = min(spec.test_size, len(train) // 5)
        parts = train.train_test_split(test_size=n_test, seed=0, shuffle=True)
        train, test = parts["train"], parts["test"]
    class_names = None
    if label_key is not None and isinstance(train.features[label_key], datasets.ClassLabel):
        class_names = train.features[label_key].names
    out = {}
    for split, ds in (("train", train), ("test", test)):
        labels = list(ds[label_key]) if label_key else None
        try:  # images are decoded lazily, inside _prepare
            out[split] = _prepare(ds[spec.image_key], labels, class_names, spec, f"{where} ({split})")
        except UNREADABLE_IMAGE as exc:
            culprit = _first_unreadable(ds, spec.image_key)
            what = f"{culprit} cannot be decoded as an image ({type(exc).__name__})" if culprit else (
                f"an image cannot be decoded ({type(exc).__name__}: {exc})")  # fmt: skip
            raise GenbenchError(f"{where} ({split}): {what}; remove or replace it") from exc
    return out


def _first_unreadable(ds: datasets.Dataset, key: str) -> str | None:
    """The file (or row) of the first image PIL cannot decode, so that the error names it."""
    if not isinstance(ds.features.get(key), datasets.Image):
        return None
    for row, item in enumerate(ds.cast_column(key, datasets.Image(decode=False))[key]):
        try:
            with Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]) as image:
                image.load()
        except UNREADABLE_IMAGE:
            return item.get("path") or f"row {row}"
    return None


def _source_fingerprint(spec: SourceSpec) -> str:
    """Sizes and times of the files behind a local source, so editing the data invalidates the cache."""
    paths = []
    if spec.source == "fashion_mnist":
        root = idx.find_root(spec.root)
        paths = [root / n for pair in idx.FILES.values() for n in pair] if root else []
    else:
        base = Path(spec.root or spec.name or "").expanduser()
        if base.exists():
            paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
    return ";".join(f"{p}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in paths)


def load_splits(spec: SourceSpec, cache_dir: str | Path) -> tuple[dict[str, datasets.Dataset], str]:
    """The prepared ``train`` and ``test`` datasets and their cache key, building them on first use."""
    key = spec.key(_source_fingerprint(spec))
    folder = Path(cache_dir).expanduser() / f"{spec.source}-{key}"
    if (folder / "done").exists():
        try:
            return {s: datasets.load_from_disk(str(folder / s)) for s in ("train", "test")}, key
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt below
            shutil.rmtree(folder, ignore_errors=True)
    check_writable(folder.parent)  # a read-only cache or a file in its place fails now, not after the build
    if spec.source == "fashion_mnist":
        splits = _fashion_mnist(spec)
    elif spec.source == "hf":
        splits = _from_dataset_dict(_load_hf(spec), spec, f"HF dataset '{spec.name}'")
    else:
        splits = _from_dataset_dict(_load_imagefolder(spec), spec, f"image folder {spec.root}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(folder, replace=True) as tmp:
        for split, ds in splits.items():
            ds.save_to_disk(str(tmp / split))
        (tmp / "done").write_text(json.dumps(spec.__dict__))
    return {s: datasets.load_from_disk(str(folder / s)) for s in ("train", "test")}, key
