"""``model=latent_diffusion``: the autoencoder stage, the latent scale (scale_by_std) and the checkpoint that keeps
both."""

from __future__ import annotations

import torch

from test_core import _tiny_model


def _images(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(n) % 3
    patterns = torch.stack([torch.linspace(-1, 1, 64).view(1, 8, 8) * sign for sign in (1.0, -1.0, 0.5)])
    return patterns[labels] + 0.05 * torch.randn(n, 1, 8, 8), labels


def test_stage_one_trains_the_autoencoder_then_the_scale_makes_unit_variance_latents():
    torch.manual_seed(0)
    model = _tiny_model(["model.space.train_images=64"], model="latent_diffusion")
    space = model.space
    images, _ = _images()
    assert space.in_stage(0) and space.in_stage(63) and not space.in_stage(64)
    assert not space.ready() and space.clips is False
    optimizer = torch.optim.Adam(space.trainable_parameters(), lr=3e-3)
    first = None
    for _ in range(80):
        optimizer.zero_grad()
        loss, parts = space.stage_loss(images)
        loss.backward()
        optimizer.step()
        first = first if first is not None else float(parts["ae_reconstruction"])
    assert float(parts["ae_reconstruction"]) < 0.5 * first  # it learns to reconstruct
    space.prepare(images)
    assert space.ready() and space.scale > 0
    torch.manual_seed(1)
    latents = space.encode(images)
    assert latents.shape[1:] == space.state_shape(model.image_shape)
    assert abs(latents.std().item() - 1) < 0.1  # scale_by_std: unit variance on the batch it was measured on
    decoded = space.decode(latents)
    assert decoded.shape == images.shape and decoded.abs().max() <= 1


def test_the_checkpoint_keeps_the_autoencoder_and_its_scale():
    torch.manual_seed(0)
    model = _tiny_model([], model="latent_diffusion")
    images, _ = _images()
    model.space.prepare(images)
    state = model.state_dict()
    assert "space.scale" in state and any(k.startswith("space.autoencoder.") for k in state)
    torch.manual_seed(5)
    other = _tiny_model([], model="latent_diffusion")
    assert not other.space.ready()
    other.load_state_dict(state)
    assert other.space.scale == model.space.scale
    z = torch.randn(4, *model.space.state_shape(model.image_shape))
    torch.testing.assert_close(other.space.decode(z), model.space.decode(z))


def test_the_optimizer_trains_each_stage_with_its_own_learning_rate():
    model = _tiny_model(["model.space.lr=5e-4"], model="latent_diffusion")
    optimizer = model.configure_optimizers()
    lrs = [group["lr"] for group in optimizer.param_groups]
    assert lrs == [2e-3, 5e-4]
    ids = [{id(p) for p in group["params"]} for group in optimizer.param_groups]
    assert ids[0] == {id(p) for p in model.net.parameters()}
    assert ids[1] == {id(p) for p in model.space.autoencoder.parameters()}
    assert model.stage_record()["autoencoder"]["params"] == sum(p.numel() for p in model.space.autoencoder.parameters())


def test_every_solver_samples_in_the_latent_and_decodes_to_images():
    from genbench.diffusion import SAMPLERS

    torch.manual_seed(0)
    model = _tiny_model([], model="latent_diffusion")
    images, _ = _images()
    model.space.prepare(images)
    for name in SAMPLERS:
        settings = model.sampler_settings({"sampler": name, "steps": 3})
        out = model.sample(4, generator=torch.Generator().manual_seed(0), **settings)
        assert out.shape == (4, *model.image_shape) and torch.isfinite(out).all() and out.abs().max() <= 1, name
        assert model.sampler_nfe(**settings) == model.last_sampler_nfe > 0, name
