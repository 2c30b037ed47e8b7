"""Fashion-MNIST's IDX files (LeCun's format, gzipped): the embedded default data set.

Debian's ``dataset-fashion-mnist`` package puts them in ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from genbench.errors import GenbenchError

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_UBYTE = 0x08  # IDX type code for unsigned bytes


def read_idx(path: Path) -> np.ndarray:
    """Read one gzipped IDX file into a uint8 array, refusing truncated or corrupt files."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise GenbenchError(f"cannot read IDX file {path}: {exc} (expected a gzipped IDX file)") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE:
        raise GenbenchError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise GenbenchError(f"{path} is truncated: header incomplete")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise GenbenchError(
            f"{path} is truncated or corrupt: header promises {expected} bytes of data, file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_root(root: str | Path | None) -> Path | None:
    """The first folder holding all four IDX files: ``root`` if given, else Debian's."""
    if root is not None:
        root = Path(root).expanduser()
        if not root.exists():
            raise GenbenchError(f"data.root {root} does not exist (expected a folder holding Fashion-MNIST's IDX .gz files)")
        missing = [n for pair in FILES.values() for n in pair if not (root / n).is_file()]
        if missing:
            raise GenbenchError(f"data.root {root} lacks {', '.join(missing)} (expected Fashion-MNIST's four IDX .gz files)")
        return root
    if all((DEBIAN_ROOT / n).is_file() for pair in FILES.values() for n in pair):
        return DEBIAN_ROOT
    return None


def load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of one split."""
    image_file, label_file = FILES[split]
    images = read_idx(root / image_file)
    labels = read_idx(root / label_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise GenbenchError(f"{root}: {split} images {images.shape} and labels {labels.shape} do not match")
    bad = np.flatnonzero(labels >= len(CLASS_NAMES))
    if len(bad):
        raise GenbenchError(f"{root / label_file}: label {int(labels[bad[0]])} at index {int(bad[0])} ({len(bad)} such); "
                            f"expected class ids 0-{len(CLASS_NAMES) - 1} ({', '.join(CLASS_NAMES)})")  # fmt: skip
    return images, labels


def split_tensors(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`load_split` as torch tensors: uint8 images (N, 1, 28, 28) and int64 labels (N,)."""
    images, labels = load_split(root, split)
    return torch.from_numpy(np.array(images)).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
