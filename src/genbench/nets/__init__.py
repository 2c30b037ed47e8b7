"""The networks, plain ``nn.Module``s: training logic lives in ``genbench.models``."""

from genbench.nets.dcgan import Discriminator, Generator
from genbench.nets.resnet_gan import ResNetDiscriminator, ResNetGenerator
from genbench.nets.unet import UNet
from genbench.nets.vae import ConvVAE

__all__ = ["ConvVAE", "Discriminator", "Generator", "ResNetDiscriminator", "ResNetGenerator", "UNet"]
