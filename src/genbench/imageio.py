"""Reading images from disk and writing PNGs that say where they came from.

Every PNG genbench writes carries text chunks (contract, "Saved images") marking it as AI-generated,
with the family, checkpoint hash and seed, so a sample that leaves the run folder stays labelled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from genbench.errors import GenbenchError
from genbench.files import atomic_open

PNG_SUFFIXES = {".png"}


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] to uint8 in [0, 255], rounding rather than truncating."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def provenance_chunks(family: str, checkpoint_sha256: str, seed: int | None, **extra: object) -> dict[str, str]:
    chunks = {
        "AI-generated": "true",
        "Software": "genbench",
        "genbench:family": family,
        "genbench:checkpoint_sha256": checkpoint_sha256,
        "genbench:seed": "" if seed is None else str(seed),
    }
    chunks.update({f"genbench:{k}": str(v) for k, v in extra.items()})
    return chunks


def _pil(image: torch.Tensor) -> Image.Image:
    array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3:
        array = array.transpose(1, 2, 0)
        if array.shape[2] == 1:
            array = array[:, :, 0]
    return Image.fromarray(array.astype(np.uint8))


def save_png(path: str | Path, image: torch.Tensor, provenance: dict[str, str], atomic: bool = True) -> None:
    """Write one uint8 (C, H, W) image (or (H, W)) with provenance text chunks, atomically.

    ``atomic=False`` writes in place: for the files of a folder that is itself written atomically
    (:func:`genbench.files.atomic_folder`), where a temporary name and a sync per image would only cost time.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    for key, value in provenance.items():
        info.add_text(key, value)
    with atomic_open(path, "wb") if atomic else open(path, "wb") as f:
        _pil(image).save(f, format="PNG", pnginfo=info)


def make_grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """uint8 (N, C, H, W) to one uint8 (C, H', W') grid, via torchvision."""
    from torchvision.utils import make_grid as tv_make_grid

    return tv_make_grid(images, nrow=nrow, padding=2, pad_value=255)


def read_png_text(path: str | Path) -> dict[str, str]:
    with Image.open(path) as im:
        return dict(getattr(im, "text", {}))


def _stack(arrays: list[np.ndarray], source: str) -> torch.Tensor:
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise GenbenchError(f"{source}: images have mixed sizes or channel counts {sorted(shapes)}; expected one shape")
    batch = np.stack(arrays)
    if batch.ndim == 3:
        batch = batch[:, :, :, None]
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))


def load_images(path: str | Path) -> torch.Tensor:
    """uint8 (N, C, H, W) from a folder of PNGs or an .npz with ``images`` (N, H, W[, C]) uint8."""
    path = Path(path).expanduser()
    if not path.exists():
        raise GenbenchError(f"{path} does not exist (expected a folder of PNGs or an .npz holding 'images')")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in PNG_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise GenbenchError(f"{path} holds no .png files (expected a folder of PNGs)")
        arrays = []
        for f in files:
            try:
                with Image.open(f) as im:
                    mode = "L" if im.mode in ("L", "I", "I;16", "1", "LA") else "RGB"
                    arrays.append(np.asarray(im.convert(mode), dtype=np.uint8))
            except (UnidentifiedImageError, OSError) as exc:
                raise GenbenchError(f"{f} is not a readable PNG: {exc}") from exc
        return _stack(arrays, str(path))
    if path.suffix == ".npz":
        try:
            with np.load(path) as data:
                if "images" not in data:
                    raise GenbenchError(f"{path} has no 'images' array (found {sorted(data.files)})")
                images = data["images"]
        except (OSError, ValueError) as exc:
            raise GenbenchError(f"{path} is not a readable .npz: {exc}") from exc
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
            raise GenbenchError(
                f"{path}: 'images' is {images.dtype} {images.shape}; expected uint8 (N, H, W) or (N, H, W, C) with C 1 or 3"
            )
        return _stack(list(images), str(path))
    raise GenbenchError(f"{path} is neither a folder of PNGs nor an .npz file")
