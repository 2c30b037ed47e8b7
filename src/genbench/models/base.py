"""``GenerativeModule``: the one interface every family implements.

Evaluation, sampling and reporting touch nothing else: ``sample``, ``family``, ``num_classes``,
``class_names``, ``images_seen``, and the capabilities a family declares on its class (``takes_sampler``,
``interpolates``, ``encodes_images``, ``step_sampler``): callers ask those, never a family's name, and never probe
for a method. Sampling always uses the EMA copy of the sampling network.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Callable, ClassVar, Sequence

import pytorch_lightning as pl
import torch
from torch import nn

from genbench.schema.types import Flag, PositiveFloat, PositiveInt, Text
from genbench import noise
from genbench.errors import GenbenchError
from genbench.models.ema import ImageEMA, checked_ema_settings
from genbench.models.resume import StepEnd, collect_rng_states, restore_rng_states
from genbench.training.budget import BudgetCallback
from genbench.training.finite import non_finite_tensors
from genbench.training.flops import SINGLE, TrainPhase
from genbench.training.speed import compile_cache_dir, optimizer_kwargs


class Diverged(GenbenchError):
    """Training diverged: a loss term went NaN, infinite or past the family's ``loss_limit``, or the weights went
    non-finite. The run stops, run.json says ``diverged`` and at which step (``diverged_at_step``), the last good
    checkpoint stays, and the command ends with the contract's one ``genbench: error:`` line (exit 2): the settings
    (a learning rate, say) were what could not be used.

    ``step`` counts training batches from 1, as run.json's ``steps`` does: step 3 is the third batch.
    """

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


class GenerativeModule(pl.LightningModule):
    family: ClassVar[str] = ""
    # What the family can do, declared here and overridden by each family's class; evaluation, sampling, the
    # report's figures, the bench and the tests read these rather than the family's name.
    #: ``sample`` runs a sampler: ``sampler_settings`` returns its settings (defaults filled in, checked; callers
    #: get them as one read-only object from :func:`genbench.sampling.sampler_settings`),
    #: ``sampler_nfe(**settings)`` its network evaluations per image, ``compiled_sampling()`` and
    #: ``warm_up_sampling(n, labels, **settings)`` its torch.compile path. False: one pass, none of these.
    takes_sampler: ClassVar[bool] = False
    #: With ``takes_sampler``: the names ``sampler=NAME`` may take.
    samplers: ClassVar[tuple[str, ...]] = ()
    #: The family's name is its config's ``family`` (one class serving several families), not the class's.
    family_from_config: ClassVar[bool] = False
    #: With ``takes_sampler``: the deterministic settings whose ``steps`` the step-count figure varies (one noise
    #: draw per row gives one image per step count); None when the family's sampler has no step count to vary.
    step_sampler: ClassVar[dict | None] = None
    #: ``interpolate(x_a, x_b, steps, labels)``: decoded images between two real images' codes.
    interpolates: ClassVar[bool] = False
    #: ``encode(images, labels)``: images in [-1, 1] to the family's latent code (a model trained on codes builds on it).
    encodes_images: ClassVar[bool] = False
    #: ``from_images(images, strength, labels, generator, progress, **settings)``: image prompts
    #: (:mod:`genbench.prompts`); ``image_prompt_refusal()`` says why a checkpoint cannot take one, if it cannot.
    image_prompts: ClassVar[bool] = False
    #: With ``image_prompts``: ``from_images`` fits a latent to each image by optimisation and takes
    #: ``inversion={"steps", "lr", "feature_weight"}``.
    inverts_images: ClassVar[bool] = False
    # A family whose healthy losses stay within known bounds sets this (the GAN: model.loss_limit): a loss term
    # past it ends the run as diverged, like a non-finite one. None: only NaN and inf are divergence (a likelihood's
    # or a denoising loss's scale depends on the data, so such families have no bound).
    loss_limit: float | None = None

    def __init__(
        self,
        image_shape: Sequence[int],
        family: Text | None = None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        conditional: Flag = True,
        ema_halflife_kimg: PositiveFloat = 44.0,
        ema_rampup_ratio: PositiveFloat | None = 0.077,
        log_every_n_steps: PositiveInt = 25,
    ):
        super().__init__()
        if family is not None and family != self.family and not self.family_from_config:
            raise GenbenchError(f"model.family={family} does not match {type(self).__name__} (family {self.family})")
        if family is not None:
            self.family = family
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes) if (conditional and num_classes) else None
        self.class_names = list(class_names) if (self.num_classes and class_names) else None
        self.ema_halflife_kimg, self.ema_rampup_ratio = checked_ema_settings(ema_halflife_kimg, ema_rampup_ratio)
        self.speed = {"compile": False, "channels_last": False, "fused_optimizer": False}  # see configure_speed
        self.compile_seconds: float | None = None
        self._training_views: dict[str, nn.Module] = {}
        self._warm_up_pending = False
        self._warming_up = False
        self.log_every_n_steps = log_every_n_steps
        self.images_seen = 0
        self.run_meta: dict | None = None  # resolved config and data facts, stored in every checkpoint
        self.checkpoint_sha256: str | None = None
        self._first_bad_step: dict[str, torch.Tensor] = {}
        self._unlogged: tuple[int, int, dict[str, torch.Tensor]] | None = None  # see log_final_losses
        self._first_bad_value: dict[str, torch.Tensor] = {}
        self._rng_to_restore: dict | None = None

    # ------------------------------------------------------------------ EMA
    def sampling_network(self) -> nn.Module:
        """The network whose EMA copy draws samples (generator, VAE, UNet)."""
        raise NotImplementedError

    def setup_ema(self) -> None:
        """Call at the end of a subclass's ``__init__``, once the sampling network exists."""
        self.ema = ImageEMA(self.sampling_network(), self.ema_halflife_kimg, self.ema_rampup_ratio)

    def configure_callbacks(self) -> list[pl.Callback]:
        attached = self._trainer is not None and any(isinstance(c, StepEnd) for c in self.trainer.callbacks)
        return [] if attached else [StepEnd()]  # once per trainer (fit, then test, would attach it twice)

    def end_step(self, batch) -> None:
        """After each training batch, before any checkpoint of it: EMA update, image count, periodic loss check."""
        batch_images = int(batch[0].shape[0]) * self.trainer.world_size  # the update's global batch (DDP: all ranks)
        self.ema.step(self.sampling_network(), batch_images, self.images_seen)
        self.images_seen += batch_images
        if (self.global_step_count() % self.log_every_n_steps) == 0:
            self.raise_if_diverged()

    def on_train_end(self) -> None:
        self.raise_if_diverged()
        self.log_final_losses()

    def global_step_count(self) -> int:
        """Training batches so far; unlike ``global_step`` it does not count each optimizer of a GAN."""
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.total.completed) if self._trainer else 0

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Refuses to save a diverged model (the run stops as ``diverged`` and the last good checkpoint stays);
        stores what an exact resume needs besides Lightning's own state."""
        self.raise_if_diverged()
        bad = non_finite_tensors(checkpoint["state_dict"])
        if bad:
            step = self.global_step_count()
            raise Diverged(f"{self.family}: {len(bad)} weight tensors became non-finite by step {step} (first: "
                           f"{bad[0]}); the checkpoint was not saved", step)  # fmt: skip
        checkpoint["genbench_images_seen"] = self.images_seen
        checkpoint["genbench_rng"] = collect_rng_states()
        if self.run_meta is not None:
            checkpoint["genbench"] = self.run_meta

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.images_seen = int(checkpoint.get("genbench_images_seen", 0))
        self._rng_to_restore = checkpoint.get("genbench_rng")

    def on_train_start(self) -> None:
        # Restored here, not when loading: the random draws of a resumed run must start exactly where the
        # checkpointed run's next step would have drawn, after everything Lightning does while setting up.
        if self._rng_to_restore is not None:
            restore_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    # ------------------------------------------------------------------ losses
    def log_losses(self, losses: dict[str, torch.Tensor]) -> None:
        """Remember, without a host sync, the first step each term went non-finite or past ``loss_limit`` (and its
        value there); log the terms on the steps the loggers write (every ``trainer.log_every_n_steps`` batches, as
        Lightning's own schedule).

        ``self.log`` on the other steps would only be overwritten before it is written, and costs ~1 ms per term
        (a GAN step logs four: 8% of its step on a 2-core CPU).
        """
        if self._warming_up:
            return
        done = self.global_step_count()
        step = torch.tensor(done + 1, device=self.device)  # this batch, counted from 1 as run.json's steps
        trainer = self._trainer
        # Lightning's own test (LoggerConnector.should_update_logs), asked before this batch counts as done
        written = trainer is None or (done + 1) % trainer.log_every_n_steps == 0 or trainer.should_stop
        for name, value in losses.items():
            value = value.detach().float()
            bad = ~torch.isfinite(value) if self.loss_limit is None else ~(value.abs() <= self.loss_limit)  # NaN too
            first = self._first_bad_step.get(name, torch.tensor(-1, device=self.device))
            new = (first < 0) & bad
            self._first_bad_step[name] = torch.where(new, step, first)
            self._first_bad_value[name] = torch.where(new, value, self._first_bad_value.get(name, value))
            if written:
                self.log(f"train/{name}", value, on_step=True, on_epoch=False)
        self._unlogged = None if written else (done, self.current_epoch, {k: v.detach() for k, v in losses.items()})

    def log_final_losses(self) -> None:
        """The last batch's losses to the loggers, when that batch was not a logging step.

        The budget decides that a batch was the last only after its training step, so the step's own test above
        cannot see it: without this, metrics.csv would stop up to ``log_every_n_steps - 1`` batches before the run
        did, and a run shorter than that would have none. (Lightning forbids ``self.log`` in ``on_train_end``; the
        row is given to the loggers as Lightning gives its own, with the epoch.)
        """
        if self._unlogged is None or self._trainer is None:
            return
        step, epoch, losses = self._unlogged
        self._unlogged = None
        metrics = {f"train/{name}": float(value) for name, value in losses.items()} | {"epoch": epoch}
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=step)
            logger.save()

    def raise_if_diverged(self) -> None:
        """Diverged, naming the earliest step at which a loss term went bad, if one did."""
        if not self._first_bad_step:
            return
        names = list(self._first_bad_step)
        steps = torch.stack([self._first_bad_step[n] for n in names]).tolist()  # the one host sync
        bad = [(step, i, name) for i, (step, name) in enumerate(zip(steps, names)) if step >= 0]
        if not bad:
            return
        step, _, name = min(bad)  # the earliest; on a tie, the term logged first (a family's total loss)
        value = float(self._first_bad_value[name])
        if math.isfinite(value):
            what = f"reached {value:.3g}, past model.loss_limit={self.loss_limit:g},"
        else:
            what = "became non-finite"
        raise Diverged(f"{self.family}: loss term '{name}' {what} at step {step}", step)

    # ------------------------------------------------------------------ sampling
    def resolve_labels(self, n: int, labels, generator: torch.Generator | None) -> torch.Tensor | None:
        """Class ids for ``n`` samples: given ids, one id for all, or (conditional, none given) uniform draws."""
        if self.num_classes is None:
            if labels is not None:
                raise GenbenchError(f"this {self.family} model is unconditional; it takes no labels")
            return None
        if labels is None:
            return noise.randint(self.num_classes, n, generator, self.device)
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        if labels.numel() == 1:
            labels = labels.expand(n)
        if labels.numel() != n:
            raise GenbenchError(f"got {labels.numel()} labels for {n} samples")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise GenbenchError(f"labels must lie in [0, {self.num_classes - 1}]")
        return labels.to(self.device)

    def randn(self, *shape: int, generator: noise.Noise = None) -> torch.Tensor:
        """Gaussian noise on this module's device, from ``generator``: per-image streams (:class:`IndexedNoise`),
        a ``torch.Generator`` wherever it lives, or the global RNG."""
        return noise.randn(shape, generator, self.device)

    @torch.no_grad()
    def sample(self, n: int, labels=None, generator: torch.Generator | None = None, **sampler_kwargs) -> torch.Tensor:
        """``n`` images in [-1, 1], shape (n, C, H, W), from the EMA weights."""
        raise NotImplementedError

    def image_prompt_refusal(self) -> str | None:
        """Why this checkpoint cannot take an image prompt (one line), or None when it can."""
        if not self.image_prompts:
            return f"the {self.family} family cannot encode images, so it takes no image prompt"
        return None

    def from_images(self, images: torch.Tensor, strength: float, labels=None, generator=None, progress: bool = False,
                    **settings):  # fmt: skip
        """Image prompts: one image per prompt in ``images`` ((N, C, H, W) in [-1, 1]) at ``strength`` (0: stay with
        the image, 1: free generation), toward the classes ``labels`` if given; a :class:`genbench.prompts.PromptResult`.
        Image i draws its noise from ``generator`` as ``sample``'s image i does."""
        raise NotImplementedError

    def leaves_parameters_unused(self) -> bool:
        """Whether a backward pass may leave some parameters without gradients (DDP must then look for them)."""
        return not self.automatic_optimization

    def stage_record(self) -> dict | None:
        """run.json's ``stages``: what a family trains before its model (a latent space's autoencoder), or None."""
        return None

    @classmethod
    def has_sampler_steps(cls) -> bool:
        """Takes a sampler whose step count can be varied: the step-count figure draws such a family."""
        return cls.takes_sampler and cls.step_sampler is not None

    def sampler_settings(self, sampler: dict | None) -> dict | None:
        """The sampler settings that apply to this model, checked and complete; None when it takes no sampler.

        ``sampler``: ``sample``'s keywords from ``cfg.sampler`` (``sampler``, ``steps``, ``eta``, ``guidance_scale``).
        Evaluation, ``genbench.sample`` and the callbacks ask this rather than the family's name, pass what it
        returns to ``sample`` and record it (it enters the evaluation protocol). This default is for families that
        sample in one pass: no sampler, and no guidance, so a scale other than 1 is refused rather than
        accepted and ignored. A family with ``takes_sampler`` overrides this.
        """
        guidance = (sampler or {}).get("guidance_scale")
        try:
            unguided = guidance is None or float(guidance) == 1.0
        except (TypeError, ValueError):
            unguided = False
        if not unguided:
            raise GenbenchError(f"sampler.guidance_scale={guidance}, but the {self.family} model has no guidance "
                                "(it samples in one pass): leave sampler.guidance_scale at 1")  # fmt: skip
        return None

    # ------------------------------------------------------------------ FLOPs (genbench.training.flops)
    def training_phases(self) -> list[TrainPhase]:
        """What a training step computes, for counting its FLOPs: one :class:`TrainPhase` per kind of step the
        model takes, each running that step's forward and backward passes on a batch without stepping an optimizer,
        updating the EMA, logging or counting images. genbench.training.flops runs each once per run, on a twin of
        the model built from its config (on the CPU, or the meta device). This default serves a family trained by ``training_step`` and Lightning's
        automatic optimization: one phase, the step's loss and its backward pass."""
        return [TrainPhase(SINGLE, self._loss_and_backward)]

    def _loss_and_backward(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self._warming_up = True  # log_losses keeps nothing of these losses
        try:
            self.training_step((images, labels), 0).backward()
        finally:
            self._warming_up = False

    def sampling_parts(self, n: int, **settings) -> list[tuple[Callable[[], object], int | None]]:
        """What ``sample(n, **settings)`` computes, for counting its FLOPs: (part, times) pairs, where ``part()``
        computes once what sampling computes ``times`` over (None: known only after sampling, as an adaptive
        solver's network calls). This default serves a family that samples in one pass: the whole ``sample``."""
        labels = None if self.num_classes is None else torch.zeros(n, dtype=torch.long)  # checked on the host
        return [(lambda: self.sample(n, labels=labels, **settings), 1)]

    def set_training_view(self, name: str, net: nn.Module) -> None:
        """``self.<name>``: the network the training step calls, compiled when ``hardware.compile=true``.

        It is kept out of the module tree (set past ``nn.Module.__setattr__``), so checkpoint keys do not depend on
        ``hardware.compile`` (torch.compile's wrapper would add ``<name>._orig_mod.*``) and weights are not stored twice.
        """
        self._training_views[name] = net
        object.__setattr__(self, name, net)

    # ------------------------------------------------------------------ speed switches (hardware.*)
    def configure_speed(self, compile: bool = False, channels_last: bool = False, fused_optimizer: bool = False) -> None:
        """The machine's speed switches; none changes what training computes beyond floating-point rounding.

        ``compile``: the training networks run through ``torch.compile`` (inductor, caches under
        :func:`compile_cache_dir`), warmed up before the budget's clock runs (:meth:`warm_up`). ``channels_last``:
        the training networks' weights and image inputs in NHWC layout (the EMA copies that sample stay as they are). ``fused_optimizer``: ``fused=True`` for every
        optimizer. Called once, after the model is built and before training.
        """
        self.speed = {"compile": bool(compile), "channels_last": bool(channels_last),
                      "fused_optimizer": bool(fused_optimizer)}  # fmt: skip
        if compile:
            compile_cache_dir()
        for name, net in self._training_views.items():
            if channels_last:
                net.to(memory_format=torch.channels_last)
                net.register_forward_pre_hook(_channels_last_input)
            object.__setattr__(self, name, torch.compile(net) if compile else net)

    def make_optimizer(self, factory, params) -> torch.optim.Optimizer:
        """``factory`` (a ``model.*optimizer`` partial) on ``params``, fused when ``hardware.fused_optimizer``."""
        return factory(params, **optimizer_kwargs(self.speed["fused_optimizer"]))

    def on_fit_start(self) -> None:
        # One process only: under DDP the warm-up would run the wrapped module's backward without DDP's forward,
        # so there the compilation is part of the first step (and of the budget).
        self._warm_up_pending = self.speed["compile"] and self.trainer.world_size == 1

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if not self._warm_up_pending:
            return
        self._warm_up_pending = False
        budget = next((cb for cb in self.trainer.callbacks if isinstance(cb, BudgetCallback)), None)
        with budget.paused() if budget is not None else nullcontext():
            start = time.perf_counter()
            self.warm_up(batch)
            self.compile_seconds = round(time.perf_counter() - start, 2)

    def warm_up(self, batch) -> None:
        """Compile the training graphs on the session's first batch with the budget's clock stopped: one training
        step's forward and backward through the compiled networks, then undone. Optimizers do not step, the RNG
        states and buffers (batch-norm statistics, spectral-norm vectors) are put back and gradients cleared, so
        training draws and computes exactly what it would have without the warm-up."""
        rng = collect_rng_states()
        buffers = [(b, b.detach().clone()) for b in self.buffers()]
        self._warming_up = True
        try:
            with self.trainer.precision_plugin.train_step_context():
                if self.automatic_optimization:
                    loss = self.training_step(batch, 0)
                    self.trainer.strategy.backward(loss, None)
                else:
                    optimizers = self.optimizers(use_pl_optimizer=False)
                    optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
                    self.optimizers = lambda use_pl_optimizer=True: [_NoStep(o) for o in optimizers]
                    self.training_step(batch, 0)
        finally:
            self.__dict__.pop("optimizers", None)
            self._warming_up = False
            restore_rng_states(rng)
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
            for param in self.parameters():
                param.grad = None


def _channels_last_input(module: nn.Module, args: tuple) -> tuple:
    """A forward pre-hook: an image batch (N, C, H, W) as the first input goes in NHWC layout."""
    if args and torch.is_tensor(args[0]) and args[0].dim() == 4:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return args


class _NoStep:
    """An optimizer whose ``step`` does nothing (gradients are still cleared): for :meth:`warm_up`."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None) -> None:
        return None
