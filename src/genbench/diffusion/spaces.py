"""Where an iterative model's states live: pixels, or a frozen autoencoder's latent (:mod:`genbench.diffusion.latent`).

A space owns what the path and the solver must not assume: the shape of a state, how images go in (``encode``) and
come out (``decode``), and whether a denoised estimate may be clipped to a known range (``clip``). The pixel space is
the data range [-1, 1]; a latent has no such range, so it clips nothing.
"""

from __future__ import annotations

from torch import Tensor, nn


class Space(nn.Module):
    """The pixel space: states are images in [-1, 1]."""

    #: ``clip`` bounds a denoised estimate (``sampler``'s ``clip_denoised`` applies)
    clips = True

    def state_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(image_shape)

    def encode(self, images: Tensor) -> Tensor:
        return images

    def decode(self, states: Tensor) -> Tensor:
        """States to images in [-1, 1]."""
        return states.clamp(-1, 1)

    def clip(self, x0: Tensor) -> Tensor:
        return x0.clamp(-1, 1)

    def identity(self) -> dict | None:
        """What of the space enters a run's training identity beyond its config (a latent space: its autoencoder)."""
        return None


PixelSpace = Space
PIXELS = Space()
