"""Reading images from disk and writing PNGs that say where they came from.

Every PNG genbench writes carries text chunks (contract, "Saved images") marking it as AI-generated,
with the family, checkpoint hash and seed, so a sample that leaves the run folder stays labelled.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
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


def check_finite(images: torch.Tensor, what: str) -> None:
    """Refuse a generated float batch holding NaN or inf: :func:`to_uint8` would turn NaN into black pixels that
    look like an image and score like one."""
    finite = torch.isfinite(images.detach()).flatten(1).all(dim=1).cpu()
    if not finite.all():
        bad = (~finite).nonzero().flatten()
        raise GenbenchError(f"{what}: {len(bad)} of {len(images)} generated images hold NaN or inf values (first: "
                            f"image {int(bad[0])} of its batch); they are not a result, so nothing was written "
                            "(diverged weights, or a sampler setting the model cannot use)")  # fmt: skip


def check_not_constant(images: torch.Tensor, what: str) -> None:
    """Refuse a generated uint8 set whose every pixel holds one value (all black, say): no model of images makes
    that on purpose, and any metric would score it as if it were a result."""
    if images.numel() and bool(images.min() == images.max()):
        raise GenbenchError(f"{what}: all {len(images)} generated images are one flat colour (every pixel "
                            f"{int(images.flatten()[0])}); they are not a result, so nothing was written")  # fmt: skip


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


@dataclass(frozen=True)
class Conversion:
    """What reading images changed, for the log and the score record. ``changes_score``: the pixels scored are not
    exactly the file's (a depth cut that dropped bits, transparency dropped), so it enters the protocol."""

    what: str
    changes_score: bool


def _png_bit_depth(path: Path) -> int:
    """Bits per sample from a PNG's IHDR (Pillow opens 16-bit RGB as 8-bit "RGB" and says nothing)."""
    with open(path, "rb") as f:
        head = f.read(26)
    return head[24] if len(head) == 26 and head[12:16] == b"IHDR" else 8


def _read_png(path: Path) -> tuple[np.ndarray, list[Conversion]]:
    """One PNG as uint8 (H, W) grey or (H, W, 3) RGB, with what had to change to get there.

    16-bit samples keep their high byte (v >> 8), which is how Pillow itself reads 16-bit RGB: 8-bit values stored
    as 16-bit (v * 257) come back exactly. 1-bit and palette images are expanded (exact); an alpha channel is
    dropped, the colours kept as stored (exact when every pixel is opaque).
    """
    conversions = []
    with Image.open(path) as im:
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey ("I": how older Pillows open it)
            wide = np.asarray(im).astype(np.int64)
            narrow = (wide >> 8).clip(0, 255).astype(np.uint8)
            lost = bool((wide != narrow.astype(np.int64) * 257).any())
            return narrow, [Conversion("16-bit grey to 8-bit, the high byte (v >> 8)", lost)]
        if _png_bit_depth(path) == 16:  # colour: Pillow has already kept the high byte, the low one is gone
            conversions.append(Conversion("16-bit colour to 8-bit, the high byte (v >> 8)", True))
        if mode == "1":
            im, mode = im.convert("L"), "L"
            conversions.append(Conversion("1-bit to 8-bit grey (0 or 255)", False))
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            colour = np.asarray(im)[..., :3]
            grey = bool((colour == colour[..., :1]).all())  # a grey palette gives one channel, as its data has
            if grey:
                im = im.convert("LA" if im.mode == "RGBA" else "L")
            mode = im.mode
            conversions.append(Conversion(f"palette to {'grey' if grey else 'RGB'}", False))
        if mode in ("LA", "La", "RGBA", "RGBa", "PA"):
            transparent = bool(np.asarray(im.getchannel("A")).min() < 255)
            mode = "L" if mode in ("LA", "La") else "RGB"
            im = im.convert(mode)
            conversions.append(Conversion("alpha channel dropped" + (" (transparent pixels scored with the colour "
                                          "they store)" if transparent else ""), transparent))  # fmt: skip
        if mode not in ("L", "RGB"):
            conversions.append(Conversion(f"mode {mode} to RGB", True))
            im = im.convert("RGB")
        return np.asarray(im, dtype=np.uint8), conversions


def load_images(path: str | Path) -> tuple[torch.Tensor, list[Conversion]]:
    """uint8 (N, C, H, W) from a folder of PNGs or an .npz with ``images`` (N, H, W[, C]) uint8, and the
    conversions that reading the PNGs needed (each with the number of files it applied to; the evaluator logs them
    and records them in the score)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise GenbenchError(f"{path} does not exist (expected a folder of PNGs or an .npz holding 'images')")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in PNG_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise GenbenchError(f"{path} holds no .png files (expected a folder of PNGs)")
        arrays, counts = [], Counter()
        for f in files:
            try:
                array, conversions = _read_png(f)
            except (UnidentifiedImageError, OSError) as exc:
                raise GenbenchError(f"{f} is not a readable PNG: {exc}") from exc
            arrays.append(array)
            counts.update(conversions)
        conversions = [Conversion(f"{c.what}: {n} of {len(files)} files", c.changes_score) for c, n in counts.items()]
        return _stack(arrays, str(path)), conversions
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
        return _stack(list(images), str(path)), []
    raise GenbenchError(f"{path} is neither a folder of PNGs nor an .npz file")
