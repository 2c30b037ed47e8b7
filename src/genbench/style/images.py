"""Photos in, for style transfer: any format Pillow reads, grey or colour, capped to a longest side."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from genbench.errors import GenbenchError

GREY_MODES = ("1", "L", "LA", "La", "F")
WIDE_GREY_MODES = ("I", "I;16", "I;16B", "I;16L")  # Pillow's convert("L") clips these at 255: a white image


@dataclass(frozen=True)
class Photo:
    pixels: torch.Tensor  # float (1, C, H, W) in [0, 1], C = 1 (grey) or 3 (RGB)
    sha256: str  # of the file as given
    original_size: tuple[int, int]  # (width, height) before the cap

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[-1], self.pixels.shape[-2]


def read_photo(path: str | Path, key: str, max_side: int | None) -> Photo:
    """The image at ``path`` (``key=`` on the command line) as grey or RGB, its longer side at most ``max_side``.

    Grey stays grey (1 channel), anything else becomes RGB (transparency dropped); the camera's EXIF orientation is
    applied, as photo viewers do. A larger image shrinks with Lanczos filtering; a smaller one keeps its size.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise GenbenchError(f"{key}={path}: {'is a folder' if path.is_dir() else 'no such file'}; expected an image file")
    data = path.read_bytes()
    if not data:
        raise GenbenchError(f"{key}={path} is an empty file; expected an image (PNG, JPEG, ...)")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in WIDE_GREY_MODES:  # 16-bit grey: the high byte, as genbench.imageio reads such PNGs
                im = Image.fromarray((np.asarray(im).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8))
            im = im.convert("L" if im.mode in GREY_MODES else "RGB")  # decodes the whole file: truncation shows here
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise GenbenchError(f"{key}={path} is not a readable image ({exc})") from exc
    original = im.size
    if max_side is not None and max(original) > max_side:
        scale = max_side / max(original)
        im = im.resize((max(1, round(original[0] * scale)), max(1, round(original[1] * scale))), Image.LANCZOS)
    array = np.asarray(im, dtype=np.float32) / 255.0
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return Photo(torch.from_numpy(np.ascontiguousarray(array))[None], hashlib.sha256(data).hexdigest(), original)


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """float (1, C, H, W) in [0, 1] to uint8 (C, H, W), rounded."""
    return (pixels[0].detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
