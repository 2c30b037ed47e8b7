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

    def build(self, image_shape: tuple[int, ...]) -> None:
        """Make what depends on the data's image shape (a latent space's autoencoder)."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the space trains itself (in its own stage); none for pixels."""
        return []

    def in_stage(self, images_seen: int) -> bool:
        """Whether the batch after ``images_seen`` images trains the space (``stage_loss``) rather than the model."""
        return False

    def stage_loss(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether ``encode`` may be used for the model's training (a latent space: its scale is set)."""
        return True

    def prepare(self, images: Tensor) -> None:
        """Called with the first batch the model trains on, when the space is not ``ready``."""

    def state_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(image_shape)

    def encode(self, images: Tensor, posterior_sample: bool = True) -> Tensor:
        """Images in [-1, 1] to states. ``posterior_sample``: draw from an encoder's posterior (training), else
        its mean (an image prompt's deterministic start)."""
        return images

    def decode(self, states: Tensor) -> Tensor:
        """States to images in [-1, 1]."""
        return states.clamp(-1, 1)

    def clip(self, x0: Tensor) -> Tensor:
        return x0.clamp(-1, 1)

    def stage_record(self, images_seen: int) -> dict | None:
        """What run.json records of the space's own stage (a latent space: its autoencoder's images and parameters)."""
        return None


PIXELS = Space()
