"""model/size=paper networks at the sizes papers report, and the GPU-size studies composed and run tiny on a CPU.

Parameter counts are checked against the papers' figures and, for the DDPM U-Net, against diffusers' UNet2DModel
built with the same layout (an independent implementation). The studies run two steps on CPU with the CPU-size nets
(model/size=cpu), on a local CIFAR-shaped HF dataset since the hub is out of reach.
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from conftest import CONF_DIR, FAMILIES, compose_train, requires_fmnist, run_cli, tiny_overrides
from hydra.utils import instantiate
from PIL import Image

from genbench.training.budget import Budget

STUDIES = ("fashion_mnist_compare", "cifar10_compare")
CPU_STEPS = ["hardware=cpu", "model/size=cpu", "budget.max_steps=2", "budget.max_images=null", "evaluate=false",
             "data.on_device=false", "callbacks.fid.every_n_steps=null", "trainer.checkpoint_every_n_steps=1000"]  # fmt: skip


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def paper_nets(family: str, tmp_path, size: int = 32, channels: int = 3) -> dict:
    """The model's networks as model/size=paper builds them, unconditional, at size x size x channels."""
    cfg = compose_train(tmp_path / "run", f"model={family}", "model/size=paper")
    keys = [k for k, node in cfg.model.items() if hasattr(node, "get") and str(node.get("_target_", "")).startswith("genbench.nets.")]
    return {k: instantiate(cfg.model[k])(image_channels=channels, image_size=size, num_classes=None) for k in keys}


def test_paper_unet_is_ddpm_cifar10_and_matches_diffusers(tmp_path):
    from diffusers import UNet2DModel

    (unet,) = paper_nets("diffusion", tmp_path).values()
    reference = UNet2DModel(  # google/ddpm-cifar10-32's layout: 128 x (1, 2, 2, 2), attention at 16 px
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), resnet_time_scale_shift="default",
    )  # fmt: skip
    assert n_params(unet) == n_params(reference) == 35_746_307  # Ho et al. 2020: 35.7M
    attending = [m.attn is not None for m in unet.encoder if hasattr(m, "attn")]
    assert attending == [False, False, True, True, False, False, False, False]  # two blocks at 16 px
    assert unet.encoder[0].res.dropout.p == 0.1


def test_paper_gan_is_sngan_cifar10(tmp_path):
    nets = paper_nets("gan", tmp_path)
    assert abs(n_params(nets["generator"]) / 4.3e6 - 1) < 0.01  # SNGAN ResNet, CIFAR-10: 4.3M and 1.0M
    assert abs(n_params(nets["discriminator"]) / 1.0e6 - 1) < 0.06
    cfg = compose_train(tmp_path / "run", "model=gan", "model/size=paper")
    assert (cfg.model.loss, cfg.model.d_steps) == ("hinge", 5)
    for optimizer in (cfg.model.g_optimizer, cfg.model.d_optimizer):
        assert (optimizer.lr, list(optimizer.betas)) == (2e-4, [0.0, 0.9])


def test_paper_vae_is_the_size_of_the_gan_pair(tmp_path):
    gan = sum(n_params(net) for net in paper_nets("gan", tmp_path).values())
    (vae,) = paper_nets("vae", tmp_path).values()
    assert abs(n_params(vae) / gan - 1) < 0.05


@pytest.mark.parametrize("family", FAMILIES)
def test_paper_nets_also_build_for_fashion_mnist(family, tmp_path):
    for net in paper_nets(family, tmp_path, size=28, channels=1).values():
        assert net.image_size == 28


@pytest.mark.parametrize("family", FAMILIES)
def test_cpu_size_is_the_family_config_unchanged(family, tmp_path):
    plain = compose_train(tmp_path / "run", f"model={family}")
    assert compose_train(tmp_path / "run", f"model={family}", "model/size=cpu").model == plain.model


@pytest.mark.parametrize("study", STUDIES)
@pytest.mark.parametrize("family", FAMILIES)
def test_studies_compose_at_paper_size_on_a_gpu(study, family, tmp_path):
    cfg = compose_train(tmp_path / "run", f"experiment={study}", f"model={family}")
    Budget(**cfg.budget)
    assert cfg.name == study and cfg.evaluate is True
    assert cfg.hardware.accelerator == "gpu" and cfg.hardware.precision == "bf16-mixed" and cfg.data.on_device
    # the paper-size networks of the family's conf/model/nets/paper/FAMILY.yaml (diffusion and flow: 128, GAN: 256)
    from omegaconf import DictConfig, OmegaConf

    paper = OmegaConf.load(CONF_DIR / "model" / "nets" / "paper" / f"{family}.yaml")
    widths = {key: node.base_channels for key, node in paper.items() if isinstance(node, DictConfig) and
              "base_channels" in node}  # fmt: skip
    assert widths and all(cfg.model[key].base_channels == width for key, width in widths.items()), widths


def test_cifar10_compare_is_scored_as_papers_report(tmp_path):
    cfg = compose_train(tmp_path / "run", "experiment=cifar10_compare")
    assert (cfg.data.source, cfg.data.name, cfg.data.image_size, cfg.data.val_size) == ("hf", "uoft-cs/cifar10", 32, 0)
    metrics = cfg.metrics
    assert (metrics.extractor, metrics.n_samples, metrics.reference_split, metrics.n_reference) == (
        "inception", 50_000, "train", 50_000)  # fmt: skip


def test_cfg_job_shows_the_paper_unet():
    result = run_cli("train", "experiment=cifar10_compare", "model=diffusion", "--cfg", "job", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    for line in ("base_channels: 128", "num_res_blocks: 2", "dropout: 0.1", "scale_shift: false", "- 16"):
        assert line in result.stdout


def test_attention_the_image_size_lacks_is_refused_before_loading(tmp_path):
    result = run_cli("train", "data=hf", f"data.name={tmp_path / 'absent'}", "model.net.attention_levels=null",
                     "model.net.attention_resolutions=[7]", f"paths.output_dir={tmp_path / 'run'}", timeout=120)  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("genbench: error:") == 1, result.stderr[-2000:]
    assert "attention_resolutions [7] do not occur at image size 32" in result.stderr
    assert not (tmp_path / "run").exists()


def cifar_like(folder, n_train: int = 96, n_test: int = 32) -> str:
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=names)})

    def split(n: int) -> datasets.Dataset:
        images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
        return datasets.Dataset.from_dict({"img": images, "label": [i % 10 for i in range(n)]}, features=features)

    datasets.DatasetDict(train=split(n_train), test=split(n_test)).save_to_disk(str(folder))
    return str(folder)


@pytest.mark.parametrize("family", FAMILIES)
def test_cifar10_compare_runs_a_few_steps_on_cpu(family, tmp_path):
    from genbench.train import train

    name = cifar_like(tmp_path / "cifar_like")
    cfg = compose_train(tmp_path / "cifar10_compare" / family, *tiny_overrides(family), "experiment=cifar10_compare",
                        f"data.name={name}", *CPU_STEPS)  # fmt: skip
    record = train(cfg)
    assert record["status"] == "completed" and record["steps"] == 2 and record["images_seen"] == 2 * 16


@requires_fmnist
def test_fashion_mnist_compare_runs_the_paper_diffusion_config_at_cpu_width(tmp_path, fmnist):
    """The paper U-Net's layout (four levels, attention at 16 px, DDPM blocks) at width 8 on 28 px data."""
    from genbench.train import train

    cfg = compose_train(tmp_path / "fashion_mnist_compare" / "diffusion", *tiny_overrides("diffusion"),
                        "experiment=fashion_mnist_compare", *CPU_STEPS[:1], *CPU_STEPS[2:], "model.net.base_channels=8",
                        "model.net.num_res_blocks=1")  # fmt: skip
    assert cfg.model.net.attention_resolutions == [16] and cfg.model.net.scale_shift is False
    record = train(cfg)
    assert record["status"] == "completed" and record["steps"] == 2
