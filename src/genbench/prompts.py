"""Image prompts: what "generate from this image at strength s" means in every family, and reading the images.

``strength`` in [0, 1] is how far from the image a family may go: 0 stays with the image (what the model makes of
it: the image itself for a pixel diffusion or flow model, its reconstruction through the autoencoder, the VAE's
encoder-decoder or the GAN's inversion), 1 is free generation. Each family implements
``GenerativeModule.from_images`` (its class sets ``image_prompts``):

* diffusion and flow (pixels or a latent): SDEdit (Meng et al. 2022): the image's state is noised to the point
  ``strength`` of the way up the sampler's grid and solved back with any solver (:class:`genbench.diffusion.Sampler`);
* VAE: the posterior mean moved toward a prior sample, z = sqrt(1 - s) mu + sqrt(s) eps (:func:`toward_prior`);
* GAN: the latent (and, if conditional, class weights) that reproduce the image, found by optimisation
  (:func:`invert`), then moved toward a prior sample the same way.

A variance-preserving move rather than a straight line: for codes spread like N(0, I), sqrt(1 - s) mu + sqrt(s) eps
stays spread like N(0, I) at every s, where (1 - s) mu + s eps shrinks toward 0 halfway (a blurred, average image).
It is the SDEdit noising x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps with alpha_bar = 1 - s.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from genbench.diffusion.samplers import maybe_progress, step_bar
from genbench.errors import GenbenchError

#: what PIL reads that a user may point ``image=`` at (a folder's other files are not images to it)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class PromptResult:
    """Images from image prompts, in [-1, 1] (N, C, H, W), and what it took: ``reconstruction_rmse`` per image is
    what strength 0 gives (the model's reconstruction) against the prompt, on a [0, 1] pixel scale; ``record``
    holds the family's own facts (a GAN's inversion steps and final loss, the solver's steps)."""

    images: Tensor
    reconstruction_rmse: Tensor
    record: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PromptImages:
    """Prompt images read from disk: uint8 (N, C, H, W) at the model's shape, with each file's name and sha256."""

    pixels: Tensor
    names: tuple[str, ...]
    sha256: tuple[str, ...]
    converted: tuple[str, ...]  # what reading changed (size, channels), to log

    def as_model_input(self) -> Tensor:
        return self.pixels.float() / 127.5 - 1


def rmse(images: Tensor, reference: Tensor) -> Tensor:
    """Per-image root-mean-square error of images in [-1, 1], on a [0, 1] scale."""
    return ((images.float() - reference.float()) / 2).pow(2).flatten(1).mean(1).sqrt()


def toward_prior(code: Tensor, prior: Tensor, strength: float) -> Tensor:
    """sqrt(1 - s) code + sqrt(s) prior: the code at 0, the prior sample at 1 (see the module's docstring)."""
    return (1 - strength) ** 0.5 * code + strength**0.5 * prior


def class_weights(source: Tensor, target: Tensor | None, strength: float, num_classes: int) -> Tensor:
    """A conditional model's class weights at ``strength``: the image's own (``source``, (N, C) weights) moved
    toward a prompt's class ids (``target``) as far as the strength goes; without a prompt, the image's own."""
    if target is None:
        return source
    return (1 - strength) * source + strength * F.one_hot(target, num_classes).to(source.dtype)


def invert(generator: nn.Module, discriminator: nn.Module | None, images: Tensor, latent_dim: int,
           num_classes: int | None, steps: int, lr: float, feature_weight: float, progress: bool = False) -> dict:  # fmt: skip
    """GAN inversion: the z (and, for a conditional generator, class weights softmax(logits)) whose image matches
    ``images``, by Adam on a pixel loss plus ``feature_weight`` times a feature loss (the discriminator's features
    ``discriminator.image_features(x)``, as a relative squared error so that the weight means the same for any
    network).

    Every image has its own z and is scored on its own loss, and the generator runs in eval mode (batch norm's
    running statistics), so an image's inversion does not depend on the others in its batch. z starts at 0 (the
    prior's mode) and the class weights uniform: the same images give the same inversion. The networks' weights
    are not touched (no gradient is kept for them). Returns {"z", "labels" (weights or None), "loss" per image}.
    """
    n = images.shape[0]
    z = torch.zeros(n, latent_dim, device=images.device, requires_grad=True)
    logits = torch.zeros(n, num_classes, device=images.device, requires_grad=True) if num_classes else None
    optimizer = torch.optim.Adam([z] + ([logits] if logits is not None else []), lr=lr)
    frozen = [p for net in (generator, discriminator) if net is not None for p in net.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.enable_grad(), step_bar(progress, steps, f"GAN inversion, {n} images") as advance:
            features = None if discriminator is None else discriminator.image_features
            target = None if features is None else features(images).detach()
            for _ in maybe_progress(range(steps), advance):
                loss = _inversion_loss(generator, features, z, logits, images, target, feature_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.sum().backward()  # a sum: each image's gradient is its own loss's
                optimizer.step()
            with torch.no_grad():
                final = _inversion_loss(generator, features, z, logits, images, target, feature_weight)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    labels = None if logits is None else torch.softmax(logits.detach(), dim=1)
    return {"z": z.detach(), "labels": labels, "loss": final.detach()}


def _inversion_loss(generator, features, z, logits, images, target, feature_weight) -> Tensor:
    labels = None if logits is None else torch.softmax(logits, dim=1)
    made = generator(z, labels)
    loss = (made - images).pow(2).flatten(1).mean(1)
    if features is not None and feature_weight > 0:
        error = (features(made) - target).pow(2).flatten(1).sum(1)
        loss = loss + feature_weight * error / target.pow(2).flatten(1).sum(1).clamp_min(1e-12)
    return loss


# ---------------------------------------------------------------- reading ---------------------------------------------


def read_prompt_images(path: str | Path, image_shape: tuple[int, ...], resize: str = "auto") -> PromptImages:
    """An image file, or every image in a folder (sorted by name), converted to the model's (C, H, W) the way the
    data module converts a dataset's images: channels to grey or RGB, then padded or resized to the side
    (:func:`genbench.data.sources.shape_image`). Unreadable, empty or missing inputs are a GenbenchError."""
    from genbench.data.sources import shape_image

    path = Path(path).expanduser()
    if not path.exists():
        raise GenbenchError(f"image={path} does not exist (expected an image file or a folder of images)")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise GenbenchError(f"image={path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    else:
        files = [path]
    channels, size = image_shape[0], image_shape[-1]
    arrays, digests, changes = [], [], set()
    for file in files:
        data = file.read_bytes()
        if not data:
            raise GenbenchError(f"image {file} is empty (0 bytes)")
        try:
            with Image.open(file) as im:
                im.load()
                mode, shape = im.mode, (im.height, im.width)
                array = shape_image(im, channels, size, resize, where=f"image {file}")
        except (UnidentifiedImageError, OSError) as exc:
            raise GenbenchError(f"image {file} is not a readable image: {exc}") from exc
        if shape != (size, size):
            changes.add(f"{shape[0]}x{shape[1]} to {size}x{size}")
        if (mode == "L") != (channels == 1):
            changes.add(f"{mode} to {'grey' if channels == 1 else 'RGB'}")
        arrays.append(array)
        digests.append(hashlib.sha256(data).hexdigest())
    pixels = torch.from_numpy(np.stack(arrays))
    return PromptImages(pixels, tuple(f.name for f in files), tuple(digests), tuple(sorted(changes)))
