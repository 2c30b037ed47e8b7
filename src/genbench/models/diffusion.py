"""Denoising diffusion: a UNet learns to predict the noise (or v) added by the schedule."""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from genbench.schema.types import Probability
from genbench.diffusion.registry import build_sampler
from genbench.diffusion.samplers import DEFAULT_SIGMA_MAX, Sampler, guided
from genbench.diffusion.schedule import NoiseSchedule
from genbench.errors import GenbenchError
from genbench.models.base import GenerativeModule
from genbench.training.speed import compile_cache_dir


FP32, BF16 = "32-true", "bf16-mixed"
SAMPLING_PRECISIONS = (FP32, BF16)  # sampler.precision: what the network runs in while sampling


def in_bf16(model_fn: Callable) -> Callable:
    """``model_fn`` under bf16 autocast on its input's device, its output back in fp32 for the solver."""

    def run(x: torch.Tensor, t) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = model_fn(x, t)
        return out.float()

    return run


def diffusion_loss(net: nn.Module, schedule: NoiseSchedule, x0: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Ho et al. 2020 eq. 14 (simple loss): MSE between the network output and the eps (or v) target."""
    t = schedule.sample_timesteps(x0.shape[0], x0.device)
    noise = torch.randn_like(x0)
    prediction = net(schedule.add_noise(x0, noise, t), t, labels)
    return F.mse_loss(prediction.float(), schedule.training_target(x0, noise, t))


def drop_labels(labels: torch.Tensor | None, num_classes: int | None, p: float) -> torch.Tensor | None:
    """Classifier-free guidance training (Ho & Salimans 2022): with probability ``p`` a label becomes the null class
    (index ``num_classes``); None for an unconditional model."""
    if num_classes is None:
        return None
    drop = torch.rand(labels.shape, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


class DiffusionModule(GenerativeModule):
    family = "diffusion"
    takes_sampler = True
    step_sampler = {"sampler": "ddim", "eta": 0.0}  # DDIM with eta 0: deterministic, one image per noise draw

    def __init__(
        self,
        net: Callable[..., nn.Module],
        schedule: NoiseSchedule,
        optimizer: Callable[..., torch.optim.Optimizer],
        label_dropout: Probability = 0.1,
        **base,
    ):
        super().__init__(**base)
        channels, size, _ = self.image_shape
        self.net = net(image_channels=channels, image_size=size, num_classes=self.num_classes)
        self.schedule = schedule
        self.optimizer_factory = optimizer
        self.label_dropout = label_dropout
        self.set_training_view("train_net", self.net)
        self.setup_ema()

    def sampling_network(self) -> nn.Module:
        return self.net

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        labels = drop_labels(labels, self.num_classes, self.label_dropout)
        loss = diffusion_loss(self.train_net, self.schedule, images, labels)
        self.log_losses({"loss": loss})
        return loss

    def configure_optimizers(self):
        return self.make_optimizer(self.optimizer_factory, self.net.parameters())

    def make_sampler(self, sampler: str = "ddim", steps: int = 50, eta: float | None = None,
                      sigma_max: float | None = DEFAULT_SIGMA_MAX, **_) -> Sampler:  # fmt: skip
        """The sampler that ``sample`` with these settings runs; bad settings are a GenbenchError."""
        try:
            chosen = build_sampler(sampler, int(steps), eta, sigma_max)
            chosen.timesteps(self.schedule)  # refuses a step count the schedule cannot give
        except ValueError as exc:
            raise GenbenchError(f"sampler: {exc}") from exc
        return chosen

    def sampler_nfe(self, **settings) -> int:
        """Network evaluations per sample for these sampler settings (``sample``'s keywords); Heun's are ~2 per step.
        Guidance at a scale other than 0 or 1 batches both branches into each evaluation, so it does not change this."""
        return self.make_sampler(**settings).nfe

    def sampler_settings(self, sampler: dict | None) -> dict:
        """Diffusion samples through a sampler: ``sampler`` completed with ``sample``'s defaults and checked (the
        sampler is built once); guidance needs a class-conditional model. See ``GenerativeModule.sampler_settings``."""
        keywords = inspect.signature(self.sample).parameters
        settings = {k: p.default for k, p in keywords.items() if k not in ("n", "labels", "generator", "progress")}
        unknown = set(sampler or {}) - set(settings)
        if unknown:
            raise GenbenchError(f"unknown sampler settings {sorted(unknown)} (expected some of {sorted(settings)})")
        settings |= dict(sampler or {})
        try:
            settings["steps"] = int(settings["steps"])
            settings["guidance_scale"] = float(settings["guidance_scale"])
            settings["eta"] = None if settings["eta"] is None else float(settings["eta"])
        except (TypeError, ValueError) as exc:
            raise GenbenchError(f"sampler settings {dict(sampler or {})}: {exc}") from exc
        if settings["precision"] not in SAMPLING_PRECISIONS:
            raise GenbenchError(f"sampler.precision={settings['precision']}; expected one of "
                                f"{', '.join(SAMPLING_PRECISIONS)}")  # fmt: skip
        if settings["precision"] == FP32:
            # fp32 is what every protocol before this setting sampled in: left out, their ids stay what they were
            del settings["precision"]
        if self.num_classes is None and settings["guidance_scale"] != 1.0:
            raise GenbenchError(f"sampler.guidance_scale={settings['guidance_scale']:g}, but this diffusion model is "
                                "unconditional (no classes to guide towards): leave it at 1")  # fmt: skip
        self.make_sampler(**settings)
        return settings

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels=None,
        generator=None,
        sampler: str = "ddim",
        steps: int = 50,
        eta: float | None = None,
        guidance_scale: float = 1.0,
        sigma_max: float | None = DEFAULT_SIGMA_MAX,
        precision: str = FP32,
        progress: bool = False,
    ) -> torch.Tensor:
        """``n`` images from the EMA weights with the named sampler (``genbench.diffusion.SAMPLERS``); the sampler's
        NFE is kept as ``last_sampler_nfe``. ``generator``: a torch.Generator, IndexedNoise streams or None.
        ``precision``: ``bf16-mixed`` runs the network under bf16 autocast; the solver's arithmetic stays fp32."""
        chosen = self.make_sampler(sampler, steps, eta, sigma_max)
        labels = self.resolve_labels(n, labels, generator)
        model_fn = self.sampling_fn(labels, guidance_scale, precision)
        noise = self.randn(n, *self.image_shape, generator=generator)
        self.last_sampler_nfe = chosen.nfe
        return chosen(model_fn, self.schedule, noise, generator=generator, progress=progress)

    def sampling_fn(self, labels: torch.Tensor | None, guidance_scale: float, precision: str) -> Callable:
        """``model_fn(x_t, t)`` as the samplers call it: the EMA network (compiled inside :meth:`compiled_sampling`),
        guided towards ``labels``, in ``precision``."""
        net = self.__dict__.get("_sampling_net", self.ema.module)
        if labels is None:
            model_fn = (lambda x, t: net(x, t, None))
        else:
            model_fn = guided(net, labels, null_label=self.num_classes, guidance_scale=float(guidance_scale))
        return model_fn if precision == FP32 else in_bf16(model_fn)

    @torch.no_grad()
    def warm_up_sampling(self, n: int, labels=None, guidance_scale: float = 1.0, precision: str = FP32, **_) -> None:
        """One network call as :meth:`sample` of ``n`` images with these settings makes it (same shapes, dtypes,
        guidance and precision), so that a compiled network compiles here rather than in the first sampling step."""
        labels = self.resolve_labels(n, labels, None)
        x = torch.zeros(n, *self.image_shape, device=self.device)
        t = torch.full((n,), self.schedule.num_timesteps - 1, dtype=torch.long, device=self.device)
        self.sampling_fn(labels, guidance_scale, precision)(x, t)

    @contextmanager
    def compiled_sampling(self) -> Iterator[None]:
        """Inside, :meth:`sample` runs the EMA network through ``torch.compile`` (``metrics.compile``).

        Inductor's default mode (no autotuning: the same kernels on every run) and no freezing: the weights stay
        inputs of the graph, so an EMA that moved since the last call (in-training FID) is sampled as it is now,
        without recompiling. Dynamo keeps the compiled graph across calls; each new batch shape compiles once,
        which is why :func:`genbench.metrics.sample_images` pads its last batch. The kernels round differently from
        eager ones, as another device's do: that stays out of the protocol, like ``metrics.device``.
        :meth:`warm_up_sampling` compiles ahead of the sampling, so compilation can be timed apart.
        """
        compile_cache_dir()  # graphs cached across processes, as for training
        # set past nn.Module.__setattr__: a registered submodule would enter state_dict and the checkpoints
        object.__setattr__(self, "_sampling_net", torch.compile(self.ema.module, dynamic=False))
        try:
            yield
        finally:
            del self.__dict__["_sampling_net"]
