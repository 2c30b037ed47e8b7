"""Diffusion numerics: the noise schedule (shared by training and sampling) and the samplers."""

from genbench.diffusion.samplers import DDIMSampler, DDPMSampler, Sampler, build_sampler, guided
from genbench.diffusion.schedule import NoiseSchedule

__all__ = ["DDIMSampler", "DDPMSampler", "NoiseSchedule", "Sampler", "build_sampler", "guided"]
