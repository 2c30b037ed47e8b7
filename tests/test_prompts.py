"""Image prompts (``GenerativeModule.from_images``) in every family, on tiny untrained networks built in-process.

What a user relies on: strength 0 stays with the image (the image itself where the model works in pixels, the
model's reconstruction where it has an encoder or an inversion, with that error recorded), strength 1 is what
``sample`` draws with the same seed, every image follows its own noise stream whatever its batch, and a GAN's
inversion really finds the latent of an image its generator can make. The command itself is in test_sample.py;
what the families do with real prompts at CPU scale is the study in experiments/image_prompts.
"""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, TINY_MODEL
from genbench.errors import GenbenchError
from genbench.noise import IndexedNoise
from genbench.prompts import class_weights, rmse, toward_prior

SAMPLER = {"sampler": "ddim", "steps": 4, "eta": 0.0}


def built(family: str, *overrides: str):
    """``family``'s tiny networks for 28-px grey images of three classes, untrained, its latent scale set."""
    from hydra import compose, initialize_config_dir

    from genbench.cli import CONF_DIR
    from genbench.models import build_model

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("train", overrides=[f"model={family}", *TINY_MODEL[family], *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 28, 28), 3, ["a", "b", "c"]).eval()
    if model.takes_sampler and not model.space.ready():
        model.space.prepare(images(8))
    return model


def images(n: int) -> torch.Tensor:
    torch.manual_seed(7)
    return (torch.rand(n, 1, 28, 28) * 2 - 1).clamp(-1, 1)


def settings(model, inversion_steps: int = 3) -> dict:
    """What the family's ``from_images`` takes beside the prompt: a sampler's settings, or a short inversion."""
    if model.takes_sampler:
        return SAMPLER
    return {"inversion": {"steps": inversion_steps}} if model.inverts_images else {}


def streams(n: int, start: int = 0) -> IndexedNoise:
    return IndexedNoise.range(3, start, n, "cpu")


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return built(request.param)


def test_every_family_takes_image_prompts(model):
    assert model.image_prompts and model.image_prompt_refusal() is None


def test_strength_zero_gives_what_the_model_makes_of_the_image_and_records_its_error(model):
    x = images(4)
    result = model.from_images(x, 0.0, generator=streams(4), **settings(model))
    assert result.images.shape == x.shape
    torch.testing.assert_close(result.reconstruction_rmse, rmse(result.images, x))
    if model.takes_sampler and model.space.clips:  # pixels: nothing is solved, the image comes back as it is
        assert torch.equal(result.images, x) and float(result.reconstruction_rmse.max()) == 0
    else:  # through an encoder or an inversion: the reconstruction, never exact
        assert float(result.reconstruction_rmse.min()) > 0


# one solver of each kind across the iterative families: ancestral (fresh noise each step), first-order, second-order
@pytest.mark.parametrize("family, sampler", [("diffusion", {"sampler": "ddpm", "steps": 4}), ("flow", {"sampler": "heun", "steps": 3}),
                                             ("latent_diffusion", SAMPLER)])  # fmt: skip
def test_strength_one_with_the_same_seed_is_unconditional_sampling(family, sampler):
    model = built(family)
    prompted = model.from_images(images(4), 1.0, generator=streams(4), **sampler)
    # without a class prompt, a conditional model follows the image alone: its unconditional branch (guidance 0)
    drawn = model.sample(4, generator=streams(4), guidance_scale=0.0, **sampler)
    assert torch.equal(prompted.images, drawn)
    labelled = model.from_images(images(4), 1.0, labels=torch.tensor([2, 2, 1, 0]), generator=streams(4), **sampler)
    assert torch.equal(labelled.images, model.sample(4, labels=torch.tensor([2, 2, 1, 0]), generator=streams(4), **sampler))


def test_an_image_gets_the_same_output_in_any_batch(model):
    x = images(5)
    whole = model.from_images(x, 0.6, generator=streams(5), **settings(model)).images
    tail = model.from_images(x[3:], 0.6, generator=streams(2, start=3), **settings(model)).images
    torch.testing.assert_close(whole[3:], tail, atol=1e-5, rtol=0)


def test_sdedit_solves_only_the_strengths_share_of_the_grid():
    model = built("flow")
    for strength, nfe in ((0.25, 2), (0.5, 4), (1.0, 8)):
        result = model.from_images(images(2), strength, generator=streams(2), sampler="euler", steps=8)
        assert result.record["nfe"] == nfe
    near = model.from_images(images(2), 0.25, generator=streams(2), sampler="euler", steps=8).images
    far = model.from_images(images(2), 0.75, generator=streams(2), sampler="euler", steps=8).images
    assert float(rmse(near, images(2)).mean()) < float(rmse(far, images(2)).mean())


def test_gan_inversion_finds_the_latent_of_an_image_its_generator_made():
    model = built("gan")
    generator = model.ema.module
    with torch.no_grad():
        torch.manual_seed(11)
        made = generator(torch.randn(4, generator.latent_dim), torch.tensor([0, 1, 2, 1])).clamp(-1, 1)
        at_start = rmse(generator(torch.zeros(4, generator.latent_dim), torch.full((4, 3), 1 / 3)), made)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = model.from_images(made, 0.0, generator=streams(4), inversion={"steps": 150, "lr": 0.05})
    assert float(result.reconstruction_rmse.mean()) < 0.35 * float(at_start.mean())
    assert result.record["inversion"]["steps"] == 150 and len(result.record["inversion_loss"]) == 4
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # the weights are untouched
    with pytest.raises(GenbenchError, match="inversion.steps=0"):
        model.from_images(made, 0.5, inversion={"steps": 0})


def test_a_latent_model_inside_its_autoencoder_stage_refuses_image_prompts():
    from hydra import compose, initialize_config_dir

    from genbench.cli import CONF_DIR
    from genbench.models import build_model

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("train", overrides=["model=latent_diffusion", *TINY_MODEL["latent_diffusion"]])
    model = build_model(cfg.model, (1, 28, 28), 3, ["a", "b", "c"])
    assert "autoencoder" in model.image_prompt_refusal()
    with pytest.raises(GenbenchError, match="cannot encode images"):
        model.from_images(images(2), 0.5, **SAMPLER)


def test_moves_toward_the_prior_and_the_prompts_class_keep_their_ends():
    code, prior = torch.randn(3, 5), torch.randn(3, 5)
    assert torch.equal(toward_prior(code, prior, 0.0), code) and torch.equal(toward_prior(code, prior, 1.0), prior)
    wide = torch.randn(20000, 2) * 1.0
    assert abs(float(toward_prior(wide, torch.randn(20000, 2), 0.5).std()) - 1) < 0.03  # spread kept halfway
    own = torch.tensor([[1.0, 0.0, 0.0]])
    assert torch.equal(class_weights(own, None, 0.7, 3), own)
    torch.testing.assert_close(class_weights(own, torch.tensor([2]), 0.25, 3), torch.tensor([[0.75, 0.0, 0.25]]))
