"""genbench: train every family of generative model (conf/model/) side by side and score them with one evaluator."""

__version__ = "0.1.0"
