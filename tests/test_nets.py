"""Shapes, ranges and initial conditions of the three families' networks (tiny widths, CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genbench.nets import ConvVAE, Discriminator, Generator, UNet

SIZES = [28, 32, 64]
CONDITIONS = [None, 10]
N = 3


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _labels(num_classes: int | None) -> torch.Tensor | None:
    return None if num_classes is None else torch.arange(N) % num_classes


ATTENTION = {28: (14,), 32: (16,), 64: (16,)}  # the second level's side: every listed resolution must occur


def _tiny_unet(size: int, num_classes: int | None = None) -> UNet:
    return UNet(
        image_channels=3,
        image_size=size,
        base_channels=8,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=ATTENTION[size],
        num_classes=num_classes,
        num_heads=2,
    )


@pytest.mark.parametrize("num_classes", CONDITIONS)
@pytest.mark.parametrize("size", SIZES)
def test_generator_shape_and_range(size, num_classes):
    generator = Generator(latent_dim=16, image_channels=3, image_size=size, base_channels=8, num_classes=num_classes)
    z = torch.randn(N, generator.latent_dim) * 50  # large inputs push tanh towards its bounds
    images = generator(z, _labels(num_classes))
    assert images.shape == (N, 3, size, size)
    assert images.min() >= -1 and images.max() <= 1


@pytest.mark.parametrize("num_classes", CONDITIONS)
@pytest.mark.parametrize("size", SIZES)
def test_discriminator_gives_one_logit_per_image(size, num_classes):
    disc = Discriminator(image_channels=3, image_size=size, base_channels=8, num_classes=num_classes)
    logits = disc(torch.randn(N, 3, size, size), _labels(num_classes))
    assert logits.shape == (N,)


def test_discriminator_projection_uses_the_label():
    disc = Discriminator(image_size=28, base_channels=8, num_classes=10, spectral_norm=False)
    nn.init.normal_(disc.label_embed.weight)
    x = torch.randn(N, 1, 28, 28)
    assert not torch.allclose(disc(x, torch.zeros(N, dtype=torch.long)), disc(x, torch.ones(N, dtype=torch.long)))


@pytest.mark.parametrize("spectral_norm", [True, False])
def test_discriminator_spectral_norm_covers_every_weight_layer(spectral_norm):
    disc = Discriminator(image_size=32, base_channels=8, num_classes=10, spectral_norm=spectral_norm)
    layers = [m for m in disc.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]
    assert len(layers) == 5  # three convs, the linear head, the projection embedding
    assert all(nn.utils.parametrize.is_parametrized(m, "weight") == spectral_norm for m in layers)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in disc.modules())


@pytest.mark.parametrize("net", [Generator, Discriminator, ConvVAE])
def test_unsupported_size_is_refused_with_the_supported_ones(net):
    with pytest.raises(ValueError, match="28, 32, 64"):
        net(image_size=30)


def test_conditional_nets_require_labels_and_unconditional_refuse_them():
    with pytest.raises(ValueError, match="labels are required"):
        Generator(latent_dim=8, image_size=28, base_channels=8, num_classes=10)(torch.randn(N, 8))
    with pytest.raises(ValueError, match="unconditional"):
        unet = UNet(image_size=28, base_channels=8, num_res_blocks=1, attention_resolutions=(14,))
        unet(torch.randn(N, 1, 28, 28), torch.zeros(N), _labels(10))


@pytest.mark.parametrize("num_classes", CONDITIONS)
@pytest.mark.parametrize("size", SIZES)
def test_vae_shapes(size, num_classes):
    vae = ConvVAE(image_channels=3, image_size=size, latent_dim=6, base_channels=8, num_classes=num_classes)
    x = torch.randn(N, 3, size, size)
    labels = _labels(num_classes)
    mu, logvar = vae.encode(x, labels)
    assert mu.shape == logvar.shape == (N, vae.latent_dim)
    assert vae.decode(torch.randn(N, vae.latent_dim), labels).shape == (N, 3, size, size)
    decoded, mu2, logvar2 = vae(x, labels)
    assert decoded.shape == x.shape
    assert torch.allclose(mu, mu2) and torch.allclose(logvar, logvar2)


def test_vae_decoder_is_unbounded():
    vae = ConvVAE(image_size=28, latent_dim=4, base_channels=8)
    out = vae.decode(torch.randn(N, 4) * 100)
    assert out.abs().max() > 1


@pytest.mark.parametrize("num_classes", CONDITIONS)
@pytest.mark.parametrize("size", SIZES)
def test_unet_shape_and_zero_output_at_init(size, num_classes):
    unet = _tiny_unet(size, num_classes)
    x = torch.randn(N, 3, size, size)
    out = unet(x, torch.tensor([0, 500, 999]), _labels(num_classes))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # the final conv starts at zero


def test_unet_attention_sits_at_the_listed_resolutions():
    def attention_blocks(size: int) -> int:
        return sum(m.attn is not None for m in _tiny_unet(size).encoder if hasattr(m, "attn"))

    assert attention_blocks(28) == 1  # level sizes 28, 14, 7: attention at 14
    assert attention_blocks(32) == 1  # 32, 16, 8: attention at 16
    assert attention_blocks(64) == 1  # 64, 32, 16: attention at 16


def test_unet_refuses_attention_at_a_resolution_it_does_not_have():
    def unet(size, **attention):
        return UNet(image_size=size, base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, **attention)

    with pytest.raises(ValueError, match=r"attention_resolutions \[7\] do not occur at image size 32.*\[32, 16, 8\]"):
        unet(32, attention_resolutions=(7, 16))
    with pytest.raises(ValueError, match=r"attention_levels \[3\] do not exist"):
        unet(32, attention_resolutions=None, attention_levels=(3,))
    with pytest.raises(ValueError, match="set the other to null"):
        unet(32, attention_resolutions=(16,), attention_levels=(1,))
    # four levels pad 28 px to 32, so one list of sides serves Fashion-MNIST and CIFAR-10
    UNet(image_size=28, base_channels=8, channel_mults=(1, 2, 2, 2), num_res_blocks=1, attention_resolutions=(16,))


def test_unet_attention_levels_name_the_same_blocks_at_every_size():
    def attending(size: int, **attention) -> list[bool]:
        unet = UNet(image_size=size, base_channels=8, num_res_blocks=1, **attention)
        return [m.attn is not None for m in unet.encoder if hasattr(m, "attn")]

    by_level = {size: attending(size, attention_resolutions=None, attention_levels=(1,)) for size in SIZES}
    assert by_level[28] == by_level[32] == by_level[64] == [False, True, False]
    assert by_level[28] == attending(28, attention_resolutions=(14,))
    assert by_level[32] == attending(32, attention_resolutions=(16,))


def test_unet_null_label_is_the_default_and_labels_matter():
    unet = _tiny_unet(28, num_classes=10).eval()
    with torch.no_grad():
        for parameter in unet.parameters():  # leave the zero init so the labels can show in the output
            parameter.normal_(0, 0.1)
    x, t = torch.randn(N, 3, 28, 28), torch.full((N,), 10)
    unconditional = unet(x, t)
    assert torch.equal(unconditional, unet(x, t, torch.full((N,), 10)))
    assert not torch.allclose(unconditional, unet(x, t, torch.zeros(N, dtype=torch.long)), atol=1e-4)


def test_unet_accepts_float_timesteps():
    unet = _tiny_unet(32)
    assert unet(torch.randn(N, 3, 32, 32), torch.tensor([0.5, 10.0, 999.9])).shape == (N, 3, 32, 32)


def test_small_unet_size_fits_cpu_training():
    unet = UNet(image_size=28, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attention_resolutions=(14,))
    params = sum(p.numel() for p in unet.parameters())
    assert 1_000_000 <= params <= 2_000_000
