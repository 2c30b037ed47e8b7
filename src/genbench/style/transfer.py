"""The style-transfer objective of Gatys et al. 2016 and its optimisation in pixel space.

L_total = a L_content + b L_style + c L_tv (their Eq. 7, plus the total-variation prior that Johnson et al. 2016 and
most implementations add). Gatys et al. scale each term by constants that depend on one network's activation sizes
(Eq. 1 and 4: 1/2, 1/(4 N_l^2 M_l^2)), so their weights (a/b around 1e-3) hold for VGG-19 only. Here each term is a
*relative* squared error instead, the same sums divided by the target's own squared norm, a fraction of the target's
size, so the weights mean the same for every network and image size:

- content: ||F_l(x) - F_l(p)||^2 / ||F_l(p)||^2 on the content layers (Eq. 1),
- style: ||G_l(x) - G_l(s)||^2 / ||G_l(s)||^2 on the style layers (Eq. 3-5), with the Gram matrix
  G_l = F_l F_l^T / M_l (M_l positions; the mean over positions lets images of different sizes share statistics),
- tv: the mean squared difference of neighbouring pixels of x over that of the content image.

Each term is averaged over its layers. The image is the only variable; it starts from the content image or from
noise and stays in [0, 1]: bounds of L-BFGS-B, or a projection after every Adam step.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from genbench.style.features import FeatureNet


def gram(features: Tensor) -> Tensor:
    """(N, C, H, W) feature maps to (N, C, C) Gram matrices, averaged over the H*W positions."""
    f = features.flatten(2)
    return f @ f.transpose(1, 2) / f.shape[2]


def relative_error(x: Tensor, target: Tensor) -> Tensor:
    return (x - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)


def layout_distance(features: Tensor, target: Tensor) -> float:
    """How far ``features`` are from ``target`` in layout alone: the relative squared error after each map is
    centred and scaled to unit variance, which takes out each filter's mean and gain (the colour and contrast that
    the style is meant to change). 0: the same layout; about 2: unrelated maps (2 (1 - correlation) per map)."""

    def standard(f: Tensor) -> Tensor:
        f = f.flatten(2)
        f = f - f.mean(dim=2, keepdim=True)
        return f / f.pow(2).mean(dim=2, keepdim=True).sqrt().clamp_min(1e-8)

    return float(relative_error(standard(features), standard(target)))


def smoothness(images: Tensor) -> Tensor:
    """The mean squared difference between horizontally and vertically neighbouring pixels."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).pow(2).mean() if images.shape[-1] > 1 else images.new_zeros(())
    dy = (images[..., 1:, :] - images[..., :-1, :]).pow(2).mean() if images.shape[-2] > 1 else images.new_zeros(())
    return dx + dy


@dataclass(frozen=True)
class Settings:
    """The optimisation's settings (their defaults and rules: conf/stylize.yaml, genbench.schema.groups.Stylize)."""

    steps: int
    optimizer: Literal["lbfgs", "adam"]
    lr: float
    content_weight: float
    style_weight: float
    tv_weight: float
    init: Literal["content", "noise"]


@dataclass
class Losses:
    """Each term's value (unweighted) at every evaluation of the objective, and once more for the result."""

    content: list[float] = field(default_factory=list)
    style: list[float] = field(default_factory=list)
    tv: list[float] = field(default_factory=list)

    def add(self, content: Tensor, style: Tensor, tv: Tensor) -> None:
        for values, term in ((self.content, content), (self.style, style), (self.tv, tv)):
            values.append(float(term.detach()))


class Objective:
    """L_total for one content and one style image (both (1, C, H, W) in [0, 1]), targets computed once."""

    def __init__(self, net: FeatureNet, content: Tensor, style: Tensor, content_layers: Sequence[str],
                 style_layers: Sequence[str], settings: Settings):  # fmt: skip
        self.net, self.settings = net, settings
        self.content_layers, self.style_layers = tuple(content_layers), tuple(style_layers)
        self.layers = tuple(dict.fromkeys(self.content_layers + self.style_layers))
        with torch.no_grad():
            self.content_targets = net(content, self.content_layers)
            self.style_targets = {k: gram(v) for k, v in net(style, self.style_layers).items()}
            self.content_smoothness = smoothness(content).clamp_min(1e-8)

    def terms(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(content, style, tv), each unweighted."""
        features = self.net(images, self.layers)
        content = sum(relative_error(features[k], self.content_targets[k]) for k in self.content_layers)
        style = sum(relative_error(gram(features[k]), self.style_targets[k]) for k in self.style_layers)
        tv = smoothness(images) / self.content_smoothness
        return content / len(self.content_layers), style / len(self.style_layers), tv

    def total(self, content: Tensor, style: Tensor, tv: Tensor) -> Tensor:
        s = self.settings
        return s.content_weight * content + s.style_weight * style + s.tv_weight * tv


def start_image(content: Tensor, init: str, generator: torch.Generator) -> Tensor:
    """The optimisation's start: the content image, or uniform noise drawn from ``generator`` (on the CPU, so a seed
    gives the same start on every device)."""
    if init == "content":
        return content.clone()
    return torch.rand(content.shape, generator=generator).to(content.device)


def transfer(objective: Objective, content: Tensor, generator: torch.Generator,
             advance: Callable[[], None] | None = None) -> tuple[Tensor, Losses, int]:  # fmt: skip
    """Optimise the image for ``settings.steps`` steps; the result in [0, 1], the losses and the steps taken
    (fewer than asked only where L-BFGS-B's line search finds no lower loss). ``advance()`` after every step."""
    x = start_image(content, objective.settings.init, generator)
    losses = Losses()
    if objective.settings.optimizer == "lbfgs":
        x, done = _lbfgs_b(objective, x, losses, advance)
    else:
        x, done = _adam(objective, x, losses, advance)
    with torch.no_grad():
        losses.add(*objective.terms(x))
    return x, losses, done


def _loss_and_grad(objective: Objective, x: Tensor, losses: Losses) -> tuple[Tensor, Tensor]:
    x = x.detach().requires_grad_(True)
    terms = objective.terms(x)
    losses.add(*terms)
    total = objective.total(*terms)
    (grad,) = torch.autograd.grad(total, x)
    return total.detach(), grad


def _lbfgs_b(objective: Objective, x: Tensor, losses: Losses, advance) -> tuple[Tensor, int]:
    """L-BFGS-B (scipy): L-BFGS, as Gatys et al. use, with the pixel bounds [0, 1] inside the method.
    torch.optim.LBFGS has no bounds, and clamping its iterate between calls breaks its curvature pairs: on a 128-px
    image the loss went back up after every clamp (from 1.3 to 27 within 100 steps, one line-search trial at 1.7e10),
    and with one iteration per call (to clamp after each) the image did not move at all."""
    from scipy.optimize import Bounds, minimize

    shape, device, dtype = x.shape, x.device, x.dtype

    def fun(flat: np.ndarray) -> tuple[float, np.ndarray]:
        image = torch.from_numpy(flat.reshape(shape)).to(device=device, dtype=dtype)
        total, grad = _loss_and_grad(objective, image, losses)
        return float(total), grad.cpu().double().numpy().ravel()

    def step_done(_) -> None:
        if advance is not None:
            advance()

    steps = objective.settings.steps
    # ftol and gtol 0: ``steps`` iterations, unless the line search finds no lower loss (float32 gradients' limit).
    options = {"maxiter": steps, "maxfun": 4 * steps + 20, "maxcor": 20, "ftol": 0.0, "gtol": 0.0}
    result = minimize(fun, x.cpu().double().numpy().ravel(), jac=True, method="L-BFGS-B", bounds=Bounds(0.0, 1.0),
                      callback=step_done, options=options)  # fmt: skip
    image = torch.from_numpy(result.x.reshape(shape)).to(device=device, dtype=dtype)
    return image, int(result.nit)


def _adam(objective: Objective, x: Tensor, losses: Losses, advance) -> tuple[Tensor, int]:
    """Adam on the pixels, projected back into [0, 1] after every step."""
    x = x.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=objective.settings.lr)
    for _ in range(objective.settings.steps):
        _, x.grad = _loss_and_grad(objective, x, losses)
        optimizer.step()
        with torch.no_grad():
            x.clamp_(0, 1)
        if advance is not None:
            advance()
    return x.detach(), objective.settings.steps


@contextmanager
def progress_bar(total: int, description: str) -> Iterator[Callable[[], None]]:
    """A rich bar of ``total`` steps on stderr (stdout carries the command's result); yields its advance function."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
        bar.update(task, completed=total)
