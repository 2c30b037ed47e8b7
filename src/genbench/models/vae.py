"""VAE: an encoder to a Gaussian latent and a decoder back, trained on the ELBO with beta and KL warm-up."""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from genbench.schema.types import Float, NonNegativeFloat, NonNegativeInt
from genbench.errors import GenbenchError
from genbench.models.base import GenerativeModule

LIKELIHOODS = ("bernoulli", "gaussian")


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per example, summed over latents (Kingma & Welling 2014, appendix B)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)


def reconstruction_nll(decoded: torch.Tensor, images: torch.Tensor, likelihood: str, log_scale: float) -> torch.Tensor:
    """-log p(x|z) per example in nats, for images in [-1, 1].

    Bernoulli: pixel intensities in [0, 1] as soft targets of the decoder's logits (the usual choice for
    (Fashion-)MNIST). Gaussian: decoder output is the mean, with a fixed standard deviation exp(log_scale).
    """
    if likelihood == "bernoulli":
        targets = (images + 1) / 2
        nll = F.binary_cross_entropy_with_logits(decoded, targets, reduction="none")
    else:
        nll = 0.5 * ((images - decoded) / math.exp(log_scale)).pow(2) + log_scale + 0.5 * math.log(2 * math.pi)
    return nll.flatten(1).sum(dim=1)


class VAEModule(GenerativeModule):
    family = "vae"
    interpolates = True
    image_prompts = True  # the posterior mean moved toward a prior sample
    encodes_images = True

    def __init__(
        self,
        net: Callable[..., nn.Module],
        optimizer: Callable[..., torch.optim.Optimizer],
        likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
        beta: NonNegativeFloat = 1.0,
        kl_warmup_steps: NonNegativeInt = 0,
        gaussian_log_scale: Float = -2.0,
        **base,
    ):
        super().__init__(**base)
        if likelihood not in LIKELIHOODS:
            raise GenbenchError(f"model.likelihood={likelihood}; expected one of {', '.join(LIKELIHOODS)}")
        channels, size, _ = self.image_shape
        self.net = net(image_channels=channels, image_size=size, num_classes=self.num_classes)
        self.set_training_view("train_net", self.net)
        self.optimizer_factory = optimizer
        self.likelihood, self.beta, self.kl_warmup_steps = likelihood, beta, kl_warmup_steps
        self.log_scale = gaussian_log_scale
        self.setup_ema()

    def sampling_network(self) -> nn.Module:
        return self.net

    def configure_optimizers(self):
        return self.make_optimizer(self.optimizer_factory, self.net.parameters())

    def current_beta(self) -> float:
        """beta, ramped linearly from 0 over kl_warmup_steps (Bowman et al. 2016)."""
        if self.kl_warmup_steps <= 0:
            return self.beta
        return self.beta * min(1.0, self.global_step_count() / self.kl_warmup_steps)

    def _labels(self, labels: torch.Tensor) -> torch.Tensor | None:
        return labels if self.num_classes is not None else None

    def negative_elbo(self, net: nn.Module, images, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example reconstruction NLL and KL, in nats."""
        decoded, mu, logvar = net(images, self._labels(labels))
        return reconstruction_nll(decoded.float(), images, self.likelihood, self.log_scale), kl_to_standard_normal(mu, logvar)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        nll, kl = self.negative_elbo(self.train_net, images, labels)
        loss = (nll + self.current_beta() * kl).mean()
        self.log_losses({"loss": loss, "reconstruction": nll.mean(), "kl": kl.mean()})
        return loss

    def on_test_epoch_start(self) -> None:
        self._test_sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # sum of -ELBO, images
        self._test_dims = 0

    def test_step(self, batch, batch_idx: int) -> None:
        """ELBO and bits/dim on the test split, from the EMA weights (the ones that sample).

        Summed per example and divided once over the whole split, every rank's share included (each test image is
        on exactly one rank), so one process and many give the same figures. In float64: the sum runs over 10^4
        terms of ~10^2 nats.
        """
        images, labels = batch
        nll, kl = self.negative_elbo(self.ema.module, images, labels)
        neg_elbo = (nll + kl).double()
        self._test_sums += torch.stack([neg_elbo.sum(), neg_elbo.new_tensor(len(neg_elbo))])
        self._test_dims = images[0].numel()

    def on_test_epoch_end(self) -> None:
        neg_elbo_sum, count = self.trainer.strategy.reduce(self._test_sums, reduce_op="sum")
        mean = neg_elbo_sum / count
        # Identical on every rank after the reduction: nothing left for Lightning to synchronise.
        self.log("test/elbo", -mean, sync_dist=False)
        # Bits per dimension of the bound: nats / (D ln 2). For the Gaussian likelihood this is a density on [-1, 1].
        self.log("test/bits_per_dim", mean / (self._test_dims * math.log(2)), sync_dist=False)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, labels=None) -> torch.Tensor:
        """The EMA encoder's posterior means of ``images`` (N, C, H, W) in [-1, 1]: (N, latent_dim)."""
        labels = None if labels is None else torch.as_tensor(labels, device=self.device).expand(images.shape[0])
        mu, _ = self.ema.module.encode(images.to(self.device), labels)
        return mu

    @torch.no_grad()
    def interpolate(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 8, labels=None) -> torch.Tensor:
        """Decoded images along the straight line between the posterior means of x_a and x_b: (steps, C, H, W)."""
        net = self.ema.module
        pair_labels = None if labels is None else torch.as_tensor(labels, device=self.device).expand(2)
        mu = self.encode(torch.stack([x_a, x_b]), pair_labels)
        weights = torch.linspace(0, 1, steps, device=self.device)[:, None]
        z = (1 - weights) * mu[0] + weights * mu[1]
        path_labels = None if pair_labels is None else pair_labels[:1].expand(steps)
        return self._to_images(net.decode(z, path_labels))

    @torch.no_grad()
    def from_images(self, images, strength, labels=None, generator=None, progress=False, **sampler_kwargs):
        """The EMA encoder's posterior mean mu of each image, moved toward a prior draw eps by the strength,
        z = sqrt(1 - s) mu + sqrt(s) eps (:func:`genbench.prompts.toward_prior`), and decoded. A class-conditional
        VAE encodes with the image's own class, the one whose code gives the best bound (-ELBO at z = mu), and
        decodes with class weights moved from it toward the prompt's (``labels``) by the strength. Labels and eps
        are drawn from ``generator`` as :meth:`sample` draws them."""
        from genbench.prompts import PromptResult, class_weights, rmse, toward_prior

        net, n = self.ema.module, images.shape[0]
        images = images.to(self.device).float()
        target = None if labels is None else self.resolve_labels(n, labels, generator)
        if target is None:
            self.resolve_labels(n, None, generator)  # drawn and unused: eps is then the one sample() draws
        prior = self.randn(n, net.latent_dim, generator=generator)
        source = None if self.num_classes is None else self.own_classes(images)
        mu, _ = net.encode(images, source)
        reconstruction = self._to_images(net.decode(mu, source))
        decode_labels = None if source is None else class_weights(source, target, float(strength), self.num_classes)
        made = self._to_images(net.decode(toward_prior(mu, prior, float(strength)), decode_labels))
        record = {"method": "posterior_mean_to_prior"}
        if source is not None:
            record["image_classes"] = source.argmax(1).tolist()
        return PromptResult(made, rmse(reconstruction, images), record)

    def own_classes(self, images: torch.Tensor) -> torch.Tensor:
        """One-hot weights of the class under which each image's bound is best: -ELBO with z at the posterior mean
        (reconstruction NLL plus KL), the conditional VAE's own p(x | y) up to the bound's gap."""
        net, n = self.ema.module, images.shape[0]
        bounds = []
        for c in range(self.num_classes):
            label = torch.full((n,), c, dtype=torch.long, device=images.device)
            mu, logvar = net.encode(images, label)
            nll = reconstruction_nll(net.decode(mu, label).float(), images, self.likelihood, self.log_scale)
            bounds.append(nll + kl_to_standard_normal(mu.float(), logvar.float()))
        best = torch.stack(bounds, 1).argmin(1)
        return F.one_hot(best, self.num_classes).float()

    def _to_images(self, decoded: torch.Tensor) -> torch.Tensor:
        """Decoder output to images in [-1, 1]: the Bernoulli mean, or the Gaussian mean."""
        if self.likelihood == "bernoulli":
            return torch.sigmoid(decoded) * 2 - 1
        return decoded.clamp(-1, 1)

    @torch.no_grad()
    def sample(self, n: int, labels=None, generator: torch.Generator | None = None, **sampler_kwargs) -> torch.Tensor:
        """Decode z ~ N(0, I); shows the decoder's mean, as is usual. Sampler settings do not apply to a VAE."""
        net = self.ema.module
        labels = self.resolve_labels(n, labels, generator)
        z = self.randn(n, net.latent_dim, generator=generator)
        return self._to_images(net.decode(z, labels))
