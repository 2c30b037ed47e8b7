"""Training FLOPs per image of the model/size=paper networks, and the wall time they imply at an assumed speed.

An ESTIMATE, not a measurement: no GPU was available when these studies were set up. The FLOPs are genbench's own
count (genbench.training.flops, what every run records in run.json as ``train_flops_per_image``) of one training
step of each family as ``experiment=cifar10_compare`` builds it (32x32x3, ten classes), on the meta device, so
nothing is computed; the wall time divides them by an ASSUMED achieved throughput. Run it from the repository root:

    python experiments/cifar10_compare/estimate.py --images 20000000 --tflops 100
"""

from __future__ import annotations

import argparse

from genbench.models.flops import twin
from genbench.training.flops import count_training

FAMILIES = ("diffusion", "gan", "vae")  # the study's sweep (experiments/cifar10_compare/README.md)
IMAGE_SHAPE, NUM_CLASSES = (3, 32, 32), 10  # CIFAR-10


def study_model(family: str):
    """``model`` of ``experiment=cifar10_compare model=FAMILY``, composed as the training command composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from genbench.cli import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("train", overrides=["experiment=cifar10_compare", f"model={family}"]).model


def study_twin(family: str):
    """The study's ``family`` model on the meta device: shapes only, nothing allocated or computed."""
    return twin(study_model(family), IMAGE_SHAPE, NUM_CLASSES, device="meta")


def train_flops_per_image(model) -> int:
    """FLOPs per training image of ``model`` (one phase each: none of the study's families trains in stages)."""
    return sum(count_training(model).per_image.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=float, default=20e6, help="the budget: training images seen")
    parser.add_argument("--tflops", type=float, default=100.0, help="ASSUMED achieved TFLOP/s (not measured)")
    args = parser.parse_args()
    print(f"32x32x3, {args.images:,.0f} images, assumed {args.tflops:g} TFLOP/s achieved")
    print("| family | training GFLOP per image | estimated img/s | estimated hours |")
    print("|---|---:|---:|---:|")
    for family in FAMILIES:
        flops = train_flops_per_image(study_twin(family))
        img_per_s = args.tflops * 1e12 / flops
        print(f"| {family} | {flops / 1e9:.2f} | {img_per_s:,.0f} | {args.images / img_per_s / 3600:.2f} |")


if __name__ == "__main__":
    main()
