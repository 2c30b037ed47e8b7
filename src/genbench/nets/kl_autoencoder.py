"""A spatial, KL-regularised autoencoder (Rombach et al. 2022's "KL-f4" at genbench's scale): images to a latent
map 4x smaller per side (28x28x1 -> 7x7x4), a diagonal Gaussian posterior over it, and a decoder back.

The latent model (``model=latent_diffusion``) trains it as its first stage and then freezes it
(:class:`genbench.diffusion.latent.LatentSpace`).
"""

from __future__ import annotations

from torch import Tensor, nn

from genbench.nets.unet import group_norm
from genbench.schema.types import PositiveInt

DOWNSAMPLING = 4  # two stride-2 stages


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), group_norm(c_out), nn.SiLU()]


class KLAutoencoder(nn.Module):
    """Encoder: a 3x3 stem, two stride-2 stages, a 3x3 head to (mu, logvar) of ``latent_channels`` each.
    Decoder: the mirror image with transposed convolutions; its output is the image's mean, unbounded."""

    def __init__(
        self,
        image_channels: int = 1,
        image_size: int = 28,
        latent_channels: PositiveInt = 4,
        base_channels: PositiveInt = 32,
    ) -> None:
        super().__init__()
        if image_size % DOWNSAMPLING:
            raise ValueError(f"the KL autoencoder needs an image size divisible by {DOWNSAMPLING}, got {image_size}")
        self.latent_channels = latent_channels
        self.latent_size = image_size // DOWNSAMPLING
        wide = 2 * base_channels
        self.encoder = nn.Sequential(
            *_block(image_channels, base_channels),
            nn.Conv2d(base_channels, base_channels, 4, stride=2, padding=1), group_norm(base_channels), nn.SiLU(),
            *_block(base_channels, wide),
            nn.Conv2d(wide, wide, 4, stride=2, padding=1), group_norm(wide), nn.SiLU(),
            *_block(wide, wide),
            nn.Conv2d(wide, 2 * latent_channels, 3, padding=1),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            *_block(latent_channels, wide),
            *_block(wide, wide),
            nn.ConvTranspose2d(wide, wide, 4, stride=2, padding=1), group_norm(wide), nn.SiLU(),
            *_block(wide, base_channels),
            nn.ConvTranspose2d(base_channels, base_channels, 4, stride=2, padding=1), group_norm(base_channels),
            nn.SiLU(),
            nn.Conv2d(base_channels, image_channels, 3, padding=1),
        )  # fmt: skip

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior's (mu, logvar), each [N, latent_channels, S/4, S/4]; logvar clamped as LDM's."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)
