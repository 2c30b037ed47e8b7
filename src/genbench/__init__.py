"""genbench: train GAN, VAE and diffusion models side by side and score them with one evaluator."""

__version__ = "0.1.0"
