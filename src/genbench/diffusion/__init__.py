"""The iterative core: a path (what is learned, :mod:`~genbench.diffusion.paths`), a solver (how it is sampled,
:mod:`~genbench.diffusion.samplers` and :mod:`~genbench.diffusion.solvers`) and a space (pixels or a latent,
:mod:`~genbench.diffusion.spaces`), combined by :class:`genbench.models.diffusion.DiffusionModule`. DDPM's
variance-preserving schedule is one path (``NoiseSchedule``), EDM's another."""

from genbench.diffusion.paths import EDMPath, Grid, Path, Point
from genbench.diffusion.registry import SAMPLERS, build_sampler
from genbench.diffusion.samplers import DDIMSampler, DDPMSampler, Sampler, guided
from genbench.diffusion.schedule import NoiseSchedule
from genbench.diffusion.solvers import DPMSolverPP2MSampler, Dopri5Sampler, EulerSampler, HeunSampler, MidpointSampler
from genbench.diffusion.spaces import PIXELS, Space

__all__ = [
    "DDIMSampler", "DDPMSampler", "DPMSolverPP2MSampler", "Dopri5Sampler", "EDMPath", "EulerSampler", "Grid",
    "HeunSampler", "MidpointSampler", "NoiseSchedule", "PIXELS", "Path", "Point", "SAMPLERS", "Sampler", "Space",
    "build_sampler", "guided",
]  # fmt: skip
