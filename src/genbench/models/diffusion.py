"""The iterative families: a U-Net trained on a probability path, sampled by an ODE/SDE solver, in a space.

One class serves every family of the core (:mod:`genbench.diffusion`): ``model.path`` says what is learned (DDPM's
VP schedule with eps or v, EDM's preconditioned sigmas, a rectified flow), ``model.space`` where (pixels, or a frozen
autoencoder's latent), and ``sampler=NAME`` how it is sampled. The family's name comes from its config
(``conf/model/FAMILY.yaml``'s ``family``).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from genbench.schema.types import Probability
from genbench.diffusion.paths import Path
from genbench.diffusion.registry import SAMPLERS, build_sampler
from genbench.diffusion.samplers import DEFAULT_SIGMA_MAX, Sampler, guided
from genbench.diffusion.spaces import Space
from genbench.errors import GenbenchError
from genbench.models.base import GenerativeModule
from genbench.training.flops import SINGLE, TrainPhase
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


def diffusion_loss(net: nn.Module, path: Path, x0: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """The path's training loss of one batch (DDPM's: Ho et al. 2020 eq. 14, MSE to the eps or v target)."""
    return path.loss(net, x0, labels)


def drop_labels(labels: torch.Tensor | None, num_classes: int | None, p: float) -> torch.Tensor | None:
    """Classifier-free guidance training (Ho & Salimans 2022): with probability ``p`` a label becomes the null class
    (index ``num_classes``); None for an unconditional model."""
    if num_classes is None:
        return None
    drop = torch.rand(labels.shape, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


class DiffusionModule(GenerativeModule):
    family = "diffusion"
    family_from_config = True  # diffusion, flow, latent_diffusion, ...: one class, the name in the config
    takes_sampler = True
    samplers = SAMPLERS
    step_sampler = {"sampler": "ddim", "eta": 0.0}  # DDIM with eta 0: deterministic, one image per noise draw
    image_prompts = True  # SDEdit, in pixels or in the space's latent

    def __init__(
        self,
        net: Callable[..., nn.Module],
        path: Path,
        optimizer: Callable[..., torch.optim.Optimizer],
        label_dropout: Probability = 0.1,
        space: Space | None = None,
        **base,
    ):
        super().__init__(**base)
        self.space = Space() if space is None else space
        self.space.build(self.image_shape)
        channels, size, _ = self.space.state_shape(self.image_shape)
        self.net = net(image_channels=channels, image_size=size, num_classes=self.num_classes)
        self.path = path
        self.optimizer_factory = optimizer
        self.label_dropout = label_dropout
        self.set_training_view("train_net", self.net)
        self.setup_ema()

    def sampling_network(self) -> nn.Module:
        return self.net

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        if self.space.in_stage(self.images_seen):  # the space's own stage first (a latent space's autoencoder)
            loss, losses = self.space.stage_loss(images)
            self.log_losses(losses)
            return loss
        if not self.space.ready():
            self.space.prepare(images)  # e.g. the latent scale from this batch (LDM's scale_by_std)
        labels = drop_labels(labels, self.num_classes, self.label_dropout)
        loss = diffusion_loss(self.train_net, self.path, self.space.encode(images), labels)
        self.log_losses({"loss": loss})
        return loss

    def training_phases(self) -> list[TrainPhase]:
        """The space's own stage while it lasts (a latent space's autoencoder: its loss and backward), then the
        denoiser's step: the space's encoding of the batch (a frozen encoder's forward pass) and the network's
        forward and backward."""

        def denoiser(images: torch.Tensor, labels: torch.Tensor) -> None:
            labels = drop_labels(labels, self.num_classes, self.label_dropout)
            diffusion_loss(self.train_net, self.path, self.space.encode(images), labels).backward()

        phases = [TrainPhase(SINGLE, denoiser, lambda images_seen: not self.space.in_stage(images_seen))]
        if self.space.trainable_parameters():
            stage = lambda images, labels: self.space.stage_loss(images)[0].backward()  # noqa: E731
            phases.insert(0, TrainPhase("stage", stage, self.space.in_stage))
        return phases

    def sampling_parts(self, n: int, **settings) -> list[tuple[Callable[[], object], int | None]]:
        """One network call as :meth:`sample` makes it (guidance batches both branches into it) times the sampler's
        NFE (None for an adaptive solver that has not sampled), and the space's one decode of the final states.
        Counted in fp32: bf16 computes the same products."""
        labels = None if self.num_classes is None else torch.zeros(n, dtype=torch.long)  # checked on the host
        call = {**settings, "precision": FP32}
        states = torch.zeros(n, *self.space.state_shape(self.image_shape), device=self.device)
        return [(lambda: self.warm_up_sampling(n, labels, **call), self.sampler_nfe(**settings)),
                (lambda: self.space.decode(states), 1)]  # fmt: skip

    def configure_optimizers(self):
        """One optimizer: the network, and a space's own parameters in a group with the space's learning rate. Each
        stage leaves the other's parameters without gradients, which the optimizer then skips."""
        groups = [{"params": list(self.net.parameters())}]
        if self.space.trainable_parameters():
            groups.append({"params": self.space.trainable_parameters(), "lr": self.space.lr})
        return self.make_optimizer(self.optimizer_factory, groups if len(groups) > 1 else groups[0]["params"])

    def leaves_parameters_unused(self) -> bool:
        """A space with a stage of its own: the autoencoder's backward passes leave the denoiser out, and back."""
        return bool(self.space.trainable_parameters())

    def stage_record(self) -> dict | None:
        """run.json's record of the space's own stage, if it has one."""
        return self.space.stage_record(self.images_seen)

    def make_sampler(self, sampler: str = "ddim", steps: int = 50, eta: float | None = None,
                     sigma_max: float | None = DEFAULT_SIGMA_MAX, rtol: float | None = None,
                     atol: float | None = None, **_) -> Sampler:  # fmt: skip
        """The sampler that ``sample`` with these settings runs; bad settings are a GenbenchError."""
        try:
            chosen = build_sampler(sampler, int(steps), eta, sigma_max, rtol, atol)
            chosen.grid(self.path)  # refuses a step count the path cannot give
        except ValueError as exc:
            raise GenbenchError(f"sampler: {exc}") from exc
        return chosen

    def sampler_nfe(self, **settings) -> int | None:
        """Network evaluations per sample for these sampler settings (``sample``'s keywords); Heun's are ~2 per step.
        Guidance at a scale other than 0 or 1 batches both branches into each evaluation, so it does not change this.
        An adaptive solver's (dopri5) is known once it has run: the last ``sample``'s, or None before one."""
        chosen = self.make_sampler(**settings)
        if chosen.adaptive:
            return getattr(self, "last_sampler_nfe", None)
        return chosen.nfe

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
            for key in ("eta", "rtol", "atol"):
                settings[key] = None if settings[key] is None else float(settings[key])
        except (TypeError, ValueError) as exc:
            raise GenbenchError(f"sampler settings {dict(sampler or {})}: {exc}") from exc
        if settings["precision"] not in SAMPLING_PRECISIONS:
            raise GenbenchError(f"sampler.precision={settings['precision']}; expected one of "
                                f"{', '.join(SAMPLING_PRECISIONS)}")  # fmt: skip
        if settings["precision"] == FP32:
            # fp32 is what every protocol before this setting sampled in: left out, their ids stay what they were
            del settings["precision"]
        for key in ("rtol", "atol"):  # dopri5's own; left out elsewhere, so the other samplers' protocol ids stay
            if settings[key] is None:
                del settings[key]
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
        rtol: float | None = None,
        atol: float | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """``n`` images from the EMA weights with the named sampler (``genbench.diffusion.SAMPLERS``); the sampler's
        NFE is kept as ``last_sampler_nfe``. ``generator``: a torch.Generator, IndexedNoise streams or None.
        ``precision``: ``bf16-mixed`` runs the network under bf16 autocast; the solver's arithmetic stays fp32."""
        chosen = self.make_sampler(sampler, steps, eta, sigma_max, rtol, atol)
        labels = self.resolve_labels(n, labels, generator)
        model_fn = self.sampling_fn(labels, guidance_scale, precision)
        noise = self.randn(n, *self.space.state_shape(self.image_shape), generator=generator)
        images = chosen(model_fn, self.path, noise, generator=generator, progress=progress, space=self.space)
        self.last_sampler_nfe = chosen.last_nfe if chosen.adaptive else chosen.nfe
        return images

    def image_prompt_refusal(self) -> str | None:
        if not self.space.ready():
            return (f"this {self.family} checkpoint stopped inside its space's own stage (its autoencoder, "
                    f"{self.images_seen} images seen): it has no latent scale yet, so it cannot encode images")  # fmt: skip
        return None

    @torch.no_grad()
    def from_images(self, images, strength, labels=None, generator=None, progress=False, sampler="ddim", steps=50,
                    eta=None, guidance_scale=1.0, sigma_max=DEFAULT_SIGMA_MAX, precision=FP32, rtol=None, atol=None):  # fmt: skip
        """SDEdit (Meng et al. 2022) with any of the samplers: the image's state (the space's posterior mean) noised to
        ``strength`` of the way up the grid, then solved back (:meth:`Sampler.__call__`). With ``labels`` (a class
        prompt) the solve is guided toward them at ``guidance_scale``; without, a class-conditional model runs its
        unconditional branch (the null label it learned with ``label_dropout``), so the image alone leads.

        The labels and the noise are drawn from ``generator`` as :meth:`sample` draws them, so strength 1 gives
        exactly ``sample``'s images (``guidance_scale=0`` for a conditional model without a prompt)."""
        from genbench.prompts import PromptResult, rmse

        refusal = self.image_prompt_refusal()
        if refusal:
            raise GenbenchError(refusal)
        n = images.shape[0]
        chosen = self.make_sampler(sampler, steps, eta, sigma_max, rtol, atol)
        drawn = self.resolve_labels(n, labels, generator)
        if labels is None and self.num_classes is not None:
            if not self.label_dropout:
                raise GenbenchError(f"this {self.family} model was trained without label dropout, so it has no "
                                    "unconditional branch to follow an image alone: give prompt=CLASS_NAME")  # fmt: skip
            guidance_scale = 0.0
        model_fn = self.sampling_fn(drawn, guidance_scale, precision)
        noise = self.randn(n, *self.space.state_shape(self.image_shape), generator=generator)
        images = images.to(self.device).float()
        state = self.space.encode(images, posterior_sample=False)
        made = chosen(model_fn, self.path, noise, generator=generator, progress=progress, space=self.space,
                      image=state, strength=float(strength))  # fmt: skip
        self.last_sampler_nfe = chosen.last_nfe
        return PromptResult(made, rmse(self.space.decode(state), images), {"method": "sdedit", "nfe": chosen.last_nfe})

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
        x = torch.zeros(n, *self.space.state_shape(self.image_shape), device=self.device)
        first = self.path.grid(1).points[0]
        dtype = torch.long if isinstance(first.time, int) else torch.float32
        t = torch.full((n,), first.time, dtype=dtype, device=self.device)
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
