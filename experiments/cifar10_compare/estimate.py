"""Training FLOPs per image of the model/size=paper networks, and the wall time they imply at an assumed speed.

An ESTIMATE, not a measurement: no GPU was available when these studies were set up. It counts the FLOPs of one
training step (torch.utils.flop_counter, batch 2 on CPU) the way each family trains (diffusion: one U-Net forward and
backward; VAE: encoder and decoder forward and backward; GAN: model.d_steps discriminator updates on a real and a
generated batch, then one generator update through the discriminator), and divides by an ASSUMED achieved throughput.
Run it from the repository root:

    python experiments/cifar10_compare/estimate.py --images 20000000 --tflops 100
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from genbench.nets import ConvVAE, ResNetDiscriminator, ResNetGenerator, UNet

BATCH = 2


def _count(step) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / BATCH


def diffusion_flops(channels: int, size: int) -> float:
    unet = UNet(image_channels=channels, image_size=size, base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                attention_resolutions=(16,), dropout=0.1, num_classes=10, num_heads=1, scale_shift=False)  # fmt: skip
    x, t, y = torch.randn(BATCH, channels, size, size), torch.randint(0, 1000, (BATCH,)), torch.zeros(BATCH, dtype=torch.long)
    return _count(lambda: unet(x, t, y).square().mean().backward())


def vae_flops(channels: int, size: int) -> float:
    vae = ConvVAE(image_channels=channels, image_size=size, latent_dim=128, base_channels=96)
    x = torch.randn(BATCH, channels, size, size)
    return _count(lambda: vae(x)[0].square().mean().backward())


def gan_flops(channels: int, size: int, d_steps: int = 5) -> float:
    g = ResNetGenerator(latent_dim=128, image_channels=channels, image_size=size, base_channels=256, num_classes=10)
    d = ResNetDiscriminator(image_channels=channels, image_size=size, base_channels=128, num_classes=10)
    real, y = torch.randn(BATCH, channels, size, size), torch.zeros(BATCH, dtype=torch.long)

    def step() -> None:
        for _ in range(d_steps):
            with torch.no_grad():
                fake = g(torch.randn(BATCH, 128), y)
            (d(real, y).mean() - d(fake, y).mean()).backward()
        (-d(g(torch.randn(BATCH, 128), y), y).mean()).backward()

    return _count(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=float, default=20e6, help="the budget: training images seen")
    parser.add_argument("--tflops", type=float, default=100.0, help="ASSUMED achieved TFLOP/s (not measured)")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{args.size}x{args.size}x{args.channels}, {args.images:,.0f} images, assumed {args.tflops:g} TFLOP/s achieved")
    print("| family | training GFLOP per image | estimated img/s | estimated hours |")
    print("|---|---:|---:|---:|")
    for family, count in (("diffusion", diffusion_flops), ("gan", gan_flops), ("vae", vae_flops)):
        flops = count(args.channels, args.size)
        img_per_s = args.tflops * 1e12 / flops
        print(f"| {family} | {flops / 1e9:.2f} | {img_per_s:,.0f} | {args.images / img_per_s / 3600:.2f} |")


if __name__ == "__main__":
    main()
