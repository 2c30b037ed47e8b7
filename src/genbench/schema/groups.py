"""The rules of every config group that is not a ``_target_`` node, and of each command's whole config.

One class per group of conf/ (conf/budget, conf/hardware, ...), one field per key with its type, range and choices.
conf/*.yaml hold the defaults and say why; these say what is allowed. Groups that build an object (``data``,
``model``, ``trainer``, ``callbacks.progress_bar``, loggers) take their rules from that object's signature
(:mod:`genbench.schema.targets`); here they are plain dicts, checked by :func:`genbench.schema.check_command`.
What no type can say (Lightning's precision names, whether a GPU is visible, whether a network fits the image size)
stays as a named check in the command's preflight.
"""

from __future__ import annotations

from typing import Annotated, Literal

from annotated_types import Ge, MinLen
from pydantic import BaseModel, ConfigDict, Strict, model_validator

from genbench.schema.types import (
    Auto, Device, Flag, FlopCount, Float, NonNegativeFloat, NonNegativeInt, PathText, Percentile, PositiveFloat,
    PositiveInt, Probability, RunName, Seed, Text,
)  # fmt: skip

SPLITS = Literal["train", "val", "test"]
SAMPLING_PRECISIONS = Literal["32-true", "bf16-mixed"]


class Group(BaseModel):
    """Unknown keys are refused; floats are finite (also in ``Any`` fields)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True)


class Budget(Group):
    max_steps: PositiveInt | None = None
    max_images: PositiveInt | None = None
    max_minutes: PositiveFloat | None = None
    max_flops: FlopCount | None = None  # training FLOPs (genbench.training.flops): 2e13, or 20T with K/M/G/T/P

    @model_validator(mode="after")
    def _exactly_one(self) -> "Budget":
        chosen = [k for k, v in self.model_dump().items() if v is not None]
        if len(chosen) != 1:
            names = ", ".join(f"budget.{k}" for k in type(self).model_fields)
            raise ValueError(f"exactly one of {names} must be set; got {', '.join(chosen) or 'none'}")
        return self


class Sampler(Group):
    """``sampler=NAME``; whether the model takes this sampler (its class's ``samplers``), or guidance at all, is
    asked of the model (``check_config`` for train, the model's ``sampler_settings`` for a checkpoint)."""

    name: Text
    steps: PositiveInt
    eta: NonNegativeFloat | None = None
    guidance_scale: Float = 1.0
    precision: SAMPLING_PRECISIONS = "32-true"
    sigma_max: PositiveFloat | None = None
    rtol: PositiveFloat | None = None  # dopri5's tolerances
    atol: PositiveFloat | None = None


class Hardware(Group):
    name: Text
    accelerator: Literal["cpu", "gpu", "cuda"]
    devices: PositiveInt | Literal[-1] | Auto | list[NonNegativeInt]
    num_nodes: PositiveInt = 1
    precision: Text  # Lightning's names (16-mixed, bf16-mixed, 32-true, ...) or auto: Lightning's own check
    strategy: Text  # Lightning's strategy registry: its own check
    compile: Flag = False
    channels_last: Flag = False
    fused_optimizer: Flag = False


class Trainer(Group):
    """``trainer.*``: Lightning Trainer arguments genbench ships, and its own checkpoint cadence. Another Trainer
    argument added with ``++trainer.KEY=`` is allowed (Lightning checks it) but must be a Trainer argument."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    max_epochs: Literal[-1] | PositiveInt = -1
    max_steps: Literal[-1] = -1  # budgets stop a run (budget.*), never the Trainer
    log_every_n_steps: PositiveInt = 25
    enable_model_summary: Flag = False
    num_sanity_val_steps: NonNegativeInt = 0
    limit_val_batches: NonNegativeInt | PositiveFloat = 0
    limit_test_batches: PositiveInt | PositiveFloat | None = None
    gradient_clip_val: NonNegativeFloat | None = None
    deterministic: Flag | Literal["warn"] = False
    checkpoint_every_n_steps: PositiveInt | None = 500
    checkpoint_every_n_minutes: PositiveFloat | None = 5


class Logger(Group):
    extra: list[dict] = []  # _target_ nodes


class Paths(Group):
    root_dir: PathText
    runs_dir: PathText
    results_dir: PathText
    cache_dir: PathText
    output_dir: PathText


class Metrics(Group):
    """``metrics.*``: what enters a score's protocol, and where and how fast it is computed (MACHINE_KEYS)."""

    extractor: Text = "auto"
    # several extractors: each run scored under each, one protocol per extractor; the first is the run's own
    extractors: Annotated[list[Text], MinLen(1)] | None = None
    inception_weights: PathText | None = None
    extractor_weights: PathText | None = None
    n_samples: PositiveInt = 10000
    reference_split: SPLITS = "test"
    n_reference: PositiveInt | None = None
    memorization: Flag = True
    heldout_split: SPLITS = "test"
    memorization_percentile: Percentile = 5.0
    batch_size: Auto | PositiveInt = "auto"
    kid_subsets: PositiveInt = 100
    kid_subset_size: PositiveInt = 1000
    isc_splits: PositiveInt = 10
    prc_neighborhood: PositiveInt = 3
    seed: Seed = 0
    device: Device = "auto"
    compile: Auto | Flag = "auto"
    cache_dir: PathText | None = None

    @model_validator(mode="after")
    def _one_extractor_choice(self) -> "Metrics":
        if self.extractors is None:
            return self
        if len(set(self.extractors)) != len(self.extractors):
            raise ValueError(f"metrics.extractors names an extractor twice: {self.extractors}")
        if self.extractor not in ("auto", self.extractors[0]):
            raise ValueError(f"metrics.extractor={self.extractor} and metrics.extractors={self.extractors} disagree: with "
                             "metrics.extractors, its first entry is the run's own extractor (leave metrics.extractor "
                             "at auto, or name the same one first)")  # fmt: skip
        if len(self.extractors) > 1 and self.extractor_weights is not None:
            raise ValueError("metrics.extractor_weights names one extractor's weights; with several "
                             "metrics.extractors it would be unclear whose: score with one extractor at a time")  # fmt: skip
        self.extractor = self.extractors[0]  # the run's own, and the one FID-during-training curves use
        return self


class Run(Group):
    """``python -m genbench.train``: the whole composed config."""

    name: RunName
    seed: Seed
    resume: Literal["auto", "must", "never"]
    evaluate: Flag
    data: dict
    model: dict
    sampler: Sampler
    trainer: Trainer
    hardware: Hardware
    logger: Logger
    callbacks: dict[str, dict | None]  # _target_ nodes (genbench.training.callbacks.instantiate_callbacks)
    paths: Paths
    budget: Budget
    metrics: Metrics


class Inversion(Group):
    """``inversion.*``: a GAN's image prompts (:func:`genbench.prompts.invert`)."""

    steps: PositiveInt = 200
    lr: PositiveFloat = 0.05
    feature_weight: NonNegativeFloat = 1.0


class Sample(Group):
    """``python -m genbench.sample``."""

    ckpt: PathText
    n: PositiveInt | None = None
    out: PathText
    seed: Seed = 0
    prompt: Text | None = None
    labels: NonNegativeInt | list[NonNegativeInt] | None = None
    image: PathText | None = None
    strength: Probability | None = None
    inversion: Inversion = Inversion()
    device: Device = "auto"
    batch_size: Auto | PositiveInt = "auto"
    nrow: PositiveInt | None = None
    sampler: Sampler


class Stylize(Group):
    """``python -m genbench.stylize``; layer names, weights files and image sizes are the network's to check."""

    content: PathText
    style: PathText
    out: PathText
    network: Literal["random", "vgg19", "fmnist_classifier"] = "random"
    weights: PathText | None = None
    max_side: PositiveInt | None = 384
    steps: PositiveInt = 100
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    lr: PositiveFloat | None = None
    content_weight: PositiveFloat = 1.0
    style_weight: PositiveFloat = 100.0
    tv_weight: NonNegativeFloat = 0.0
    content_layers: list[Text] | None = None
    style_layers: list[Text] | None = None
    init: Literal["content", "noise"] = "content"
    seed: Seed = 0
    device: Device = "auto"


class Evaluate(Group):
    """``python -m genbench.evaluate``."""

    ckpt: PathText | None = None
    samples: PathText | None = None
    reference: PathText | None = None
    out: PathText | None = None
    seed: Seed = 0
    data: dict
    sampler: Sampler
    metrics: Metrics
    paths: Paths


class CostSampler(Group):
    name: Text
    eta: NonNegativeFloat | None = None
    sigma_max: PositiveFloat | None = None
    families: list[Text] | None = None  # draw this entry for these families only (null: every one with a sampler)


class ReportSettings(Group):
    device: Device = "auto"
    seed: Seed = 0
    figures: Flag = True
    samples: Flag = True
    grid_rows: PositiveInt = 6
    ddim: Flag = True
    ddim_steps: list[PositiveInt]
    ddim_seeds: list[Seed]
    ddim_fid_steps: list[PositiveInt] | None = None
    ddim_fid_n: NonNegativeInt = 250
    interpolation: Flag = True
    interp_pairs: PositiveInt = 4
    interp_steps: Annotated[int, Strict(), Ge(2)] = 10  # both ends of each interpolation
    compute_curves: Flag = True
    throughput: Flag = True
    sampler_cost: Flag = True
    cost_samplers: list[CostSampler]
    cost_steps: list[PositiveInt]
    cost_n: PositiveInt = 200
    wandb: Flag = False
    wandb_project: Text = "genbench"

    @model_validator(mode="after")
    def _lists(self) -> "ReportSettings":
        for key in ("ddim_steps", "ddim_seeds", "cost_samplers", "cost_steps"):
            if not getattr(self, key):
                raise ValueError(f"report.{key}=[]; expected at least one entry")
        return self


class Report(Group):
    """``python -m genbench.report``."""

    sweep: PathText
    out: PathText
    report: ReportSettings
    metrics: Metrics
    paths: Paths
