"""The peers genbench is measured against, each written as its own project's documentation writes it.

* diffusers: ``UNet2DModel`` at genbench's U-Net widths, trained with its ``DDPMScheduler`` (v-prediction) and its
  ``EMAModel``, as diffusers' unconditional training example does; its ``DDIMScheduler`` and
  ``DPMSolverMultistepScheduler`` sampling loops, configured as tests/test_samplers_reference.py proves them
  step-for-step equal to genbench's samplers (so equal settings sample equal images, hence equal FID).
* a pytorch/examples-style DCGAN (transposed convolutions from a 1x1 latent, BatchNorm, BCE loss, Adam(0.5, 0.999),
  D updated on real then fake, G on the same fake) at the widths of genbench's GAN, written here.
* a bare loop of genbench's own nets (the same loss, optimizer, EMA and batches as the Lightning run): what
  Lightning costs.
"""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from genbench.diffusion.samplers import spaced_timesteps
from genbench.models.diffusion import DiffusionModule, diffusion_loss, drop_labels
from genbench.models.gan import GANModule


def batches(datamodule, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """genbench's training batches, endlessly, as float images in [-1, 1] on ``device`` (what a bare loop reads)."""
    while True:
        for images, labels in datamodule.train_dataloader():
            yield images.to(device, non_blocking=True).float().div(127.5).sub(1.0), labels.to(device, non_blocking=True)


def steps_runner(step: Callable[[tuple], None], data: Iterator, warm: int, steps: int, device: torch.device):
    """A contender that runs ``warm`` untimed then ``steps`` timed steps and returns the timed seconds."""
    from timing import sync

    def run() -> float:
        import time

        for _ in range(warm):
            step(next(data))
        sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            step(next(data))
        sync(device)
        return time.perf_counter() - started

    return run


# ---------------------------------------------------------------------------------------------- the denoiser
def diffusers_unet(net_cfg: dict, channels: int, image_size: int, num_classes: int | None) -> nn.Module:
    """diffusers' ``UNet2DModel`` with the widths, depth, attention levels and heads of genbench's ``UNet`` config."""
    from diffusers import UNet2DModel

    mults = list(net_cfg["channel_mults"])
    base = int(net_cfg["base_channels"])
    multiple = 2 ** (len(mults) - 1)
    size = -(-image_size // multiple) * multiple
    if net_cfg.get("attention_levels") is not None:  # levels by index (0: full size) or by side in pixels
        attend = [i in list(net_cfg["attention_levels"]) for i in range(len(mults))]
    else:
        attend = [size // 2**i in list(net_cfg["attention_resolutions"] or ()) for i in range(len(mults))]
    widths = tuple(base * m for m in mults)
    groups = max(g for g in range(1, 33) if all(w % g == 0 and w // g >= 4 for w in widths))  # genbench: >= 4 a group
    return UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=int(net_cfg["num_res_blocks"]),
        block_out_channels=widths, down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attend),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attend)),
        attention_head_dim=widths[-1] // int(net_cfg["num_heads"]), norm_num_groups=groups,
        dropout=float(net_cfg.get("dropout", 0.0)), num_class_embeds=None if num_classes is None else num_classes + 1,
        resnet_time_scale_shift="scale_shift" if net_cfg.get("scale_shift") else "default",
    )  # fmt: skip


def diffusers_train_step(unet: nn.Module, schedule, num_classes: int | None, label_dropout: float, precision_ctx):
    """One step of diffusers' training example: add_noise, v target, MSE, AdamW, EMAModel."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    scheduler = DDPMScheduler(num_train_timesteps=schedule.num_timesteps, trained_betas=schedule.betas.double().numpy(),
                              prediction_type="v_prediction")  # fmt: skip
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3, weight_decay=0.0)
    ema = EMAModel(unet.parameters(), decay=0.999)

    def step(batch) -> None:
        images, labels = batch
        noise = torch.randn_like(images)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (images.shape[0],), device=images.device)
        labels = drop_labels(labels, num_classes, label_dropout)
        with precision_ctx():
            prediction = unet(scheduler.add_noise(images, noise, t), t, class_labels=labels).sample
        loss = F.mse_loss(prediction.float(), scheduler.get_velocity(images, noise, t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.step(unet.parameters())

    return step


def genbench_bare_diffusion_step(model, precision_ctx):
    """genbench's denoising step (loss, AdamW, EMA) in a plain loop: the Lightning run minus Lightning."""
    optimizer = model.configure_optimizers()
    net = getattr(model, "train_net", model.net)
    images_seen = [0]

    def step(batch) -> None:
        images, labels = batch
        labels = drop_labels(labels, model.num_classes, model.label_dropout)
        with precision_ctx():
            loss = diffusion_loss(net, model.path, images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.ema.step(model.net, images.shape[0], images_seen[0])
        images_seen[0] += images.shape[0]

    return step


def diffusers_sampler(name: str, steps: int, schedule):
    """The diffusers scheduler that samples as genbench's ``name`` sampler does (v-prediction, clipped x_0)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    common = {"num_train_timesteps": schedule.num_timesteps, "trained_betas": schedule.betas.double().numpy(),
              "prediction_type": "v_prediction", "timestep_spacing": "trailing"}  # fmt: skip
    if name == "ddim":
        scheduler = DDIMScheduler(**common, clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True)
    elif name == "dpmpp_2m":
        # dynamic thresholding with sample_max_value = 1 is genbench's clipping of x_0 to [-1, 1]
        scheduler = DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                                solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero",
                                                thresholding=True, sample_max_value=1.0)  # fmt: skip
    else:
        raise ValueError(f"no diffusers peer for sampler {name}")
    scheduler.set_timesteps(steps)
    assert [int(t) for t in scheduler.timesteps] == spaced_timesteps(schedule.num_timesteps, steps)
    return scheduler


@torch.no_grad()
def diffusers_sample(net: nn.Module, scheduler, n: int, batch_size: int, shape, num_classes, device, precision_ctx):
    """``n`` uint8 images from a diffusers scheduler loop over ``net`` (genbench's U-Net, class i mod C)."""
    out = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        x = torch.randn(count, *shape, device=device) * scheduler.init_noise_sigma
        labels = None if num_classes is None else (torch.arange(start, start + count, device=device) % num_classes)
        scheduler.set_timesteps(len(scheduler.timesteps))
        for t in scheduler.timesteps:
            with precision_ctx():
                output = net(scheduler.scale_model_input(x, t), t.to(device).expand(count), labels).float()
            x = scheduler.step(output, t, x).prev_sample
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------- GAN
class ExamplesGenerator(nn.Sequential):
    """pytorch/examples' DCGAN generator at 28 px: a 1x1 latent through transposed convolutions with BatchNorm."""

    def __init__(self, latent_dim: int, widths: list[int], channels: int, start: int):
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, widths[0], start, 1, 0, bias=False),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU(True)]  # fmt: skip
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        super().__init__(*layers, nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh())


class ExamplesDiscriminator(nn.Sequential):
    """pytorch/examples' DCGAN discriminator at 28 px: strided convolutions, BatchNorm after the first, a sigmoid."""

    def __init__(self, widths: list[int], channels: int, side: int):
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, inplace=True)]
        super().__init__(*layers, nn.Conv2d(widths[-1], 1, side, 1, 0, bias=False), nn.Sigmoid(), nn.Flatten(0))


def dcgan_examples_step(gan_model, device: torch.device, precision_ctx):
    """pytorch/examples' DCGAN training step, at the layer widths of genbench's generator and discriminator."""
    from genbench.nets.dcgan import layout

    g, d = gan_model.generator, gan_model.discriminator
    side, stages = layout(g.image_size)
    g_widths = [g._start[0] // 2**i for i in range(stages)]
    d_widths = [m.out_channels for m in d.features if isinstance(m, nn.Conv2d)]
    latent = g.latent_dim
    net_g = ExamplesGenerator(latent, g_widths, g.image_channels, side).to(device)
    net_d = ExamplesDiscriminator(d_widths, d.image_channels, side).to(device)
    opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    criterion = nn.BCELoss()

    def step(batch) -> None:
        real, _ = batch
        n = real.shape[0]
        ones, zeros = torch.ones(n, device=device), torch.zeros(n, device=device)
        net_d.zero_grad(set_to_none=True)
        with precision_ctx():
            out_real = net_d(real)
        criterion(out_real.float(), ones).backward()
        with precision_ctx():
            fake = net_g(torch.randn(n, latent, 1, 1, device=device))
            out_fake = net_d(fake.detach())
        criterion(out_fake.float(), zeros).backward()
        opt_d.step()
        net_g.zero_grad(set_to_none=True)
        with precision_ctx():
            out = net_d(fake)
        criterion(out.float(), ones).backward()
        opt_g.step()

    return step


def genbench_bare_gan_step(model, precision_ctx):
    """genbench's GAN step (its nets, losses, optimizers and EMA) in a plain loop."""
    opt_g, opt_d = model.configure_optimizers()
    images_seen = [0]

    def step(batch) -> None:
        real, labels = batch
        with precision_ctx():
            model.adversarial_step(real, labels, opt_g, opt_d)
        model.ema.step(model.generator, real.shape[0], images_seen[0])
        images_seen[0] += real.shape[0]

    return step


# ---------------------------------------------------------------------------------------------- training peers
class TrainingPeer(NamedTuple):
    """A family's peer for the training comparison, and issue 12's targets for it.

    ``build(cfg, model, device, precisions, genbench_precision)``: ``(peer steps by precision name, peer's name,
    genbench's bare step, parameter counts)``. ``steps``: the mode's key for steps per round. ``ratio_target``:
    genbench/peer throughput at least this; ``paper_target``: genbench's img/s for ``--paper``, if it has one.
    """

    build: Callable
    steps: str
    ratio_target: float
    paper_target: float | None = None


def _unet_peer(cfg, model, device, precisions: dict, genbench_precision):
    steps = {}
    for name, ctx in precisions.items():
        unet = diffusers_unet(dict(cfg.model.net), *model.image_shape[:2], model.num_classes).to(device)
        steps[name] = diffusers_train_step(unet, model.path, model.num_classes, model.label_dropout, ctx)
    params = {"genbench": sum(p.numel() for p in model.net.parameters()), "peer": sum(p.numel() for p in unet.parameters())}
    return steps, "diffusers UNet2DModel", genbench_bare_diffusion_step(model, genbench_precision), params


def _dcgan_peer(cfg, model, device, precisions: dict, genbench_precision):
    steps = {name: dcgan_examples_step(model, device, ctx) for name, ctx in precisions.items()}
    params = {"genbench": sum(p.numel() for n, p in model.named_parameters() if not n.startswith("ema."))}
    return steps, "pytorch/examples DCGAN", genbench_bare_gan_step(model, genbench_precision), params


# By the family each peer is written for (its module class's ``family``); the bench compares every family here.
TRAINING_PEERS = {
    DiffusionModule.family: TrainingPeer(_unet_peer, "train_steps", ratio_target=1.4, paper_target=5000.0),
    GANModule.family: TrainingPeer(_dcgan_peer, "gan_steps", ratio_target=1.0),
}
