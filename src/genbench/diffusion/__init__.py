"""Diffusion numerics: the noise schedule (shared by training and sampling) and the samplers."""

from genbench.diffusion.registry import SAMPLERS, build_sampler
from genbench.diffusion.samplers import DDIMSampler, DDPMSampler, Sampler, guided
from genbench.diffusion.schedule import NoiseSchedule
from genbench.diffusion.solvers import DPMSolverPP2MSampler, EulerSampler, HeunSampler

__all__ = [
    "DDIMSampler", "DDPMSampler", "DPMSolverPP2MSampler", "EulerSampler", "HeunSampler", "NoiseSchedule",
    "SAMPLERS", "Sampler", "build_sampler", "guided",
]  # fmt: skip
