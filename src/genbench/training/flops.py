"""Training and sampling FLOPs, counted with torch's ``FlopCounterMode`` (torch.utils.flop_counter).

The model says what to count (:meth:`GenerativeModule.training_phases`, :meth:`GenerativeModule.sampling_parts`);
this module runs it once. Training is counted on a twin of the model built from its config on the CPU (or on the
meta device, where tensors have shapes and no data and nothing is computed: the same counts, for big networks), so
the live model (weights, EMA, optimizers, ``images_seen``) is never touched, and the random streams are put back as
they were: a run that counts trains exactly as one that did not. Attention is counted in its reference form (two
matrix products): torch's CPU flash attention is not in the counter's table, so counting it as the kernel torch
picks would make the count depend on the machine. The counts depend on the config alone.

What is counted is the counter's table: matrix products (mm, addmm, bmm, baddbmm), convolutions and attention,
forward and backward, two FLOPs per multiply-add. Elementwise work (activations, norms, losses, the optimizer's
update) is not, as in the FLOP counts papers give.

Training: FLOPs per image of each phase's step (one forward and backward on a batch of :data:`COUNT_BATCH`),
divided by the batch. A GAN's step is its ``d_steps`` discriminator updates plus the generator update; a VAE's its
encoder and decoder; a diffusion or flow model's the network's forward and backward. A latent model has two phases:
its space's stage (the autoencoder, while ``images_seen`` is below the stage's images) and the denoiser's step (the
frozen encoder's pass included). A run's ``train_flops`` adds up, batch by batch, the images of each phase times that
phase's cost; its ``train_flops_per_image`` is that total over the images seen (one phase: the phase's cost).

Sampling: one network call as ``sample`` makes it (guidance's two branches batched into it) times the sampler's
network evaluations (NFE), plus one decode where the model samples in a latent space; for one-pass families the
whole ``sample``. Per image, for the given sampler settings.

Cost, once per training session: building the twin and one training step of 2 images, 0.1-0.5 s for the default
networks on one CPU core (on meta, 0.1-1.3 s: its kernels are Python), and about 2 s on meta for each paper network
(model/size=paper); once per evaluation, one network call of 2 images.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from genbench.schema.types import FLOP_SUFFIXES
from genbench.training.rng import collect_rng_states, restore_rng_states

COUNT_BATCH = 2  # images the counted step sees; every count is linear in the batch
SINGLE = "model"  # the name of the phase of a model trained in one kind of step


def _always(images_seen: int) -> bool:
    return True


@dataclass(frozen=True)
class TrainPhase:
    """One kind of training step a model takes.

    ``step(images, labels)`` computes that step's forward and backward passes on one batch, without stepping an
    optimizer, updating the EMA, logging or counting images; ``trains(images_seen)`` says whether the batch that
    follows ``images_seen`` images takes this step (the first phase that says so does).
    """

    name: str
    step: Callable[[Tensor, Tensor], object]
    trains: Callable[[int], bool] = _always


class _IdleOptimizer:
    """An optimizer that neither steps nor clears: for counting a manually optimized step (the GAN's)."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None

    def step(self, closure=None) -> None:
        return None


IDLE_OPTIMIZER = _IdleOptimizer()


@dataclass(frozen=True)
class TrainFlops:
    """FLOPs per training image of each phase, in the order the model gave them, and which batch takes which."""

    per_image: dict[str, int]
    trains: Sequence[Callable[[int], bool]] = field(default=(), repr=False)

    def phase(self, images_seen: int) -> str:
        """The phase the batch after ``images_seen`` images trains in (the last one when none says so)."""
        names = list(self.per_image)
        return next((name for name, trains in zip(names, self.trains) if trains(images_seen)), names[-1])

    def spent(self, steps: int, images: int) -> tuple[int, dict[str, int]]:
        """(FLOPs, images per phase) of ``steps`` equal batches of ``images`` in all (training batches are full:
        genbench.data.order): for a run whose checkpoint was saved before FLOPs were counted."""
        by_phase = dict.fromkeys(self.per_image, 0)
        batch = images // steps if steps else 0
        if len(by_phase) == 1:
            by_phase[next(iter(by_phase))] = images
        else:
            for k in range(steps):
                by_phase[self.phase(k * batch)] += batch
        return sum(self.per_image[name] * n for name, n in by_phase.items()), by_phase


@contextmanager
def untouched_random_streams() -> Iterator[None]:
    """Whatever draws random numbers inside (building a model, a noise level, a dropout mask) leaves every global
    stream where it was: a run that counted its FLOPs trains exactly as one that did not."""
    states = collect_rng_states()
    try:
        yield
    finally:
        restore_rng_states(states)


def _count(run: Callable[[], object]) -> int:
    """FLOPs of ``run()``, with attention in its reference form (two matrix products, which the counter knows)
    whatever device runs it: torch's CPU flash attention is not in the counter's table and would count as 0."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def count_training(model, batch: int = COUNT_BATCH) -> TrainFlops:
    """FLOPs per image of each of ``model``'s training phases, counted on ``model`` itself: give it a twin (:func:`genbench.models.flops.twin`)."""
    device = next(model.parameters()).device
    images = torch.zeros(batch, *model.image_shape, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    phases = model.training_phases()
    per_image = {}
    with untouched_random_streams():
        for phase in phases:
            total = _count(lambda: phase.step(images, labels))
            per_image[phase.name] = total // batch
    for param in model.parameters():
        param.grad = None
    return TrainFlops(per_image, tuple(p.trains for p in phases))


def sampling_flops(model, settings: dict | None, n: int = COUNT_BATCH) -> int | None:
    """FLOPs per image that ``model.sample`` costs with these sampler settings (checked ones: genbench.sampling);
    None where the count of network calls is not known (an adaptive solver before it has sampled).

    Counted on the model itself, in eval mode as it samples (no batch statistics move), without gradients and with
    the random streams put back, so nothing of it changes; attention is counted in its reference form, so the count
    is the same on every device. Cost: one network call (and a decode) of ``n`` images.
    """
    total, was_training = 0, model.training
    model.eval()
    try:
        with untouched_random_streams(), torch.no_grad():
            for part, times in model.sampling_parts(n, **(settings or {})):
                if times is None:
                    return None
                total += _count(part) * int(times)
    finally:
        model.train(was_training)
    return total // n


def si_flops(value: float) -> str:
    """``2.1e13`` as ``21T``: three significant digits and the largest suffix that fits."""
    for suffix, scale in reversed(FLOP_SUFFIXES.items()):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"
