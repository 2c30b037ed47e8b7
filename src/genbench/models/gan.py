"""GAN: a generator and a discriminator trained against each other with Lightning's manual optimization."""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from genbench.schema.types import NonNegativeFloat, PositiveFloat, PositiveInt
from genbench.errors import GenbenchError
from genbench.models.base import GenerativeModule
from genbench.training.flops import IDLE_OPTIMIZER, SINGLE, TrainPhase


def d_loss_non_saturating(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Goodfellow et al. 2014: -log D(x) - log(1 - D(G(z)))."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def g_loss_non_saturating(fake: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss -log D(G(z)) (Goodfellow et al. 2014, sec. 3)."""
    return F.softplus(-fake).mean()


def d_loss_hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Lim & Ye 2017; Miyato et al. 2018 eq. 16."""
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def d_loss_wasserstein(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The critic's side of the Wasserstein loss (Arjovsky et al. 2017); its penalty comes separately."""
    return fake.mean() - real.mean()


def g_loss_adversarial(fake: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))]: the generator loss of both hinge and WGAN training."""
    return -fake.mean()


LOSSES = {
    "non_saturating": (d_loss_non_saturating, g_loss_non_saturating),
    "hinge": (d_loss_hinge, g_loss_adversarial),
    "wgan_gp": (d_loss_wasserstein, g_loss_adversarial),
}


def gradient_penalty(discriminator: nn.Module, real, fake, labels) -> torch.Tensor:
    """Gulrajani et al. 2017 eq. 3: (||grad D(x_hat)|| - 1)^2 on random interpolates x_hat."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(mixed, labels).sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


class GANModule(GenerativeModule):
    family = "gan"
    image_prompts = True  # by inversion: a latent fitted to each image
    inverts_images = True

    def __init__(
        self,
        generator: Callable[..., nn.Module],
        discriminator: Callable[..., nn.Module],
        g_optimizer: Callable[..., torch.optim.Optimizer],
        d_optimizer: Callable[..., torch.optim.Optimizer],
        loss: Literal["non_saturating", "hinge", "wgan_gp"] = "hinge",
        gp_weight: NonNegativeFloat = 10.0,
        d_steps: PositiveInt = 1,
        loss_limit: PositiveFloat | None = 1e4,
        **base,
    ):
        super().__init__(**base)
        if loss not in LOSSES:
            raise GenbenchError(f"model.loss={loss}; expected one of {', '.join(LOSSES)}")
        if d_steps < 1:
            raise GenbenchError(f"model.d_steps={d_steps}; expected at least 1")
        # A GAN's losses do not go NaN when it blows up: its discriminator outputs and losses grow without bound
        # (at lr=1e6, |g_loss| ~ 1e7 from the first batch on) and the run would end "completed". Healthy runs stay
        # far below the limit: 400 batches of the default GAN on Fashion-MNIST peaked at |term| 2.3 (hinge),
        # 7.0 (non-saturating, D(x) logits) and 29 (WGAN-GP, whose critic has no fixed scale); 1e4 leaves room for
        # a critic that drifts over a long run.
        self.loss_limit = None if loss_limit is None else float(loss_limit)
        channels, size, _ = self.image_shape
        self.generator = generator(image_channels=channels, image_size=size, num_classes=self.num_classes)
        self.discriminator = discriminator(image_channels=channels, image_size=size, num_classes=self.num_classes)
        self.set_training_view("train_generator", self.generator)
        self.set_training_view("train_discriminator", self.discriminator)
        self.g_optimizer_factory, self.d_optimizer_factory = g_optimizer, d_optimizer
        self.loss_name, self.gp_weight, self.d_steps = loss, gp_weight, d_steps
        self.d_loss_fn, self.g_loss_fn = LOSSES[loss]
        self.automatic_optimization = False
        self.setup_ema()

    def sampling_network(self) -> nn.Module:
        return self.generator

    def configure_optimizers(self):
        return [self.make_optimizer(self.g_optimizer_factory, self.generator.parameters()),
                self.make_optimizer(self.d_optimizer_factory, self.discriminator.parameters())]  # fmt: skip

    def _latents(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.generator.latent_dim, device=self.device)

    def training_step(self, batch, batch_idx: int) -> None:
        real, labels = batch
        g_opt, d_opt = self.optimizers()
        self.log_losses(self.adversarial_step(real, labels, g_opt, d_opt, self.manual_backward))

    def adversarial_step(self, real, labels, g_opt, d_opt, backward=torch.Tensor.backward) -> dict[str, torch.Tensor]:
        """``d_steps`` discriminator updates, then one generator update; returns the loss terms to log.

        The generator runs once per discriminator step. The last step's fakes keep their graph and are the
        generator update's fakes (as in pytorch/examples' DCGAN), so a generator update costs one discriminator
        forward and one backward through both nets, not another generator forward. Real and fake images go through
        the discriminator as one batch: it has no batch statistics, so this equals two passes (spectral norm's power
        iteration then runs once per update, not twice).
        """
        labels = labels if self.num_classes is not None else None
        n = real.shape[0]
        both_labels = None if labels is None else torch.cat([labels, labels])
        for i in range(self.d_steps):
            with torch.set_grad_enabled(i == self.d_steps - 1):
                fake = self.train_generator(self._latents(n), labels)
            d_real, d_fake = self.train_discriminator(torch.cat([real, fake.detach()]), both_labels).split(n)
            d_loss = self.d_loss_fn(d_real, d_fake)
            losses = {"d_loss": d_loss}
            if self.loss_name == "wgan_gp":
                penalty = gradient_penalty(self.train_discriminator, real, fake.detach(), labels)
                d_loss = d_loss + self.gp_weight * penalty
                losses["gradient_penalty"] = penalty
            d_opt.zero_grad(set_to_none=True)
            backward(d_loss)
            d_opt.step()

        g_loss = self.g_loss_fn(self.train_discriminator(fake, labels))
        g_opt.zero_grad(set_to_none=True)
        backward(g_loss)
        g_opt.step()
        return {**losses, "g_loss": g_loss, "d_real": d_real.mean(), "d_fake": d_fake.mean()}

    def training_phases(self) -> list[TrainPhase]:
        """One phase: the whole adversarial step (``d_steps`` discriminator updates and the generator update), with
        optimizers that do not step."""
        step = lambda real, labels: self.adversarial_step(real, labels, IDLE_OPTIMIZER, IDLE_OPTIMIZER)  # noqa: E731
        return [TrainPhase(SINGLE, step)]

    @torch.no_grad()
    def sample(self, n: int, labels=None, generator: torch.Generator | None = None, **sampler_kwargs) -> torch.Tensor:
        """One generator pass; ``sampler_kwargs`` (a sampler's settings) do not apply to a GAN."""
        labels = self.resolve_labels(n, labels, generator)
        z = self.randn(n, self.ema.module.latent_dim, generator=generator)
        return self.ema.module(z, labels).clamp(-1, 1)

    def from_images(self, images, strength, labels=None, generator=None, progress=False,
                    inversion: dict | None = None, **sampler_kwargs):  # fmt: skip
        """GAN inversion (:meth:`invert_images`), then :meth:`from_inversion` at ``strength``."""
        fit = self.invert_images(images, inversion, progress)
        return self.from_inversion(fit, strength, labels, generator)

    def invert_images(self, images, inversion: dict | None = None, progress: bool = False) -> dict:
        """z* (and, conditional, class weights y*) fitted to each image by :func:`genbench.prompts.invert` against
        the EMA generator, with the discriminator's features for the feature loss. ``inversion``: ``steps`` (200),
        ``lr`` (0.05), ``feature_weight`` (1.0). The fit does not depend on the strength: a study of several
        strengths inverts once."""
        from genbench.prompts import invert, rmse

        settings = {"steps": 200, "lr": 0.05, "feature_weight": 1.0} | dict(inversion or {})
        if int(settings["steps"]) < 1:
            raise GenbenchError(f"inversion.steps={settings['steps']}; expected at least 1 optimiser step")
        net = self.ema.module
        images = images.to(self.device).float()
        was_training = self.discriminator.training
        self.discriminator.eval()  # no spectral-norm power iteration: the weights' state stays as loaded
        try:
            fit = invert(net, self.discriminator, images, net.latent_dim, self.num_classes, int(settings["steps"]),
                         float(settings["lr"]), float(settings["feature_weight"]), progress)  # fmt: skip
        finally:
            self.discriminator.train(was_training)
        with torch.no_grad():
            fit["reconstruction_rmse"] = rmse(net(fit["z"], fit["labels"]).clamp(-1, 1), images)
        return fit | {"settings": {k: settings[k] for k in ("steps", "lr", "feature_weight")}}

    @torch.no_grad()
    def from_inversion(self, fit: dict, strength: float, labels=None, generator=None):
        """z = sqrt(1 - s) z* + sqrt(s) eps, and the class weights moved from y* toward the prompt's class
        (``labels``) by the strength; labels and eps drawn from ``generator`` as :meth:`sample` draws them."""
        from genbench.prompts import PromptResult, class_weights, toward_prior

        net, n = self.ema.module, fit["z"].shape[0]
        target = None if labels is None else self.resolve_labels(n, labels, generator)
        if target is None:
            self.resolve_labels(n, None, generator)  # drawn and unused: eps is then the one sample() draws
        prior = self.randn(n, net.latent_dim, generator=generator)
        weights = None if fit["labels"] is None else class_weights(fit["labels"], target, float(strength), self.num_classes)
        made = net(toward_prior(fit["z"], prior, float(strength)), weights).clamp(-1, 1)
        record = {"method": "inversion", "inversion": fit["settings"], "inversion_loss": fit["loss"].tolist()}
        if fit["labels"] is not None:
            record["image_classes"] = fit["labels"].argmax(1).tolist()
        return PromptResult(made, fit["reconstruction_rmse"], record)
