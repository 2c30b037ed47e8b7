"""Feature networks for style transfer, chosen by ``network=``: each says which layers it has, which it uses by
default for content and for style, what it reads (RGB or grey) and how small an image it can describe.

- ``random``: the offline default. Ustyuzhaninov et al. 2017 ("What does it take to generate natural textures?")
  showed that one layer of *random* convolution filters at several scales, followed by a ReLU, already carries the
  texture statistics that Gram matrices match. Their filters grow with the scale (3 to 55 px); here one 5x5 filter
  bank reads an image pyramid instead (each level halves the image), which covers the same receptive fields, 5 to
  160 px, at a fraction of the cost of a 55x55 convolution. Its weights come from a fixed seed: the same network on
  every machine, with nothing to download.
- ``vgg19``: Gatys et al.'s network, torchvision's VGG-19, from a weights file on disk (``weights=PATH``).
- ``fmnist_classifier``: genbench's own Fashion-MNIST classifier (genbench.metrics.classifier), for 28-px images.

Every network takes images in [0, 1] and normalises them itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbench.errors import GenbenchError

NETWORKS = ("random", "vgg19", "fmnist_classifier")
# A layer's map must span at least this many positions a side: a Gram matrix over fewer averages a handful of
# pixels and says nothing about texture. An image's shorter side must reach MIN_MAP times the deepest layer's stride.
MIN_MAP = 4
# ITU-R BT.601 luma, as PIL's "L" mode: how an RGB image reaches a grey network.
LUMA = (0.299, 0.587, 0.114)


class FeatureNet(nn.Module):
    """A frozen network that maps images in [0, 1] to named feature maps."""

    name: str
    in_channels: int  # 3: RGB, 1: grey
    strides: dict[str, int]  # every layer, in network order, and its stride to the input
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    weights_sha256: str

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.strides)

    def check_layers(self, layers: Sequence[str], key: str) -> tuple[str, ...]:
        from genbench.schema.check import nearest

        if not layers:
            raise GenbenchError(f"{key}=[]; expected at least one of the {self.name} network's layers")
        for layer in layers:
            if layer not in self.strides:
                raise GenbenchError(f"{key}: the {self.name} network has no layer '{layer}'"
                                    f"{nearest(layer, self.layers).replace('known keys there', 'its layers')}")
        return tuple(layers)

    def min_side(self, layers: Sequence[str]) -> int:
        """The shortest image side whose every chosen layer still spans MIN_MAP positions."""
        return MIN_MAP * max(self.strides[layer] for layer in layers)

    def adapt(self, images: Tensor) -> Tensor:
        """(N, 1 or 3, H, W) images to the channels the network reads: grey repeated, or RGB to luma."""
        if images.shape[1] == self.in_channels:
            return images
        if self.in_channels == 3:
            return images.expand(-1, 3, -1, -1)
        luma = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * luma).sum(dim=1, keepdim=True)

    def forward(self, images: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        return self.features(self.adapt(images), set(layers))

    def features(self, images: Tensor, wanted: set[str]) -> dict[str, Tensor]:
        raise NotImplementedError


def _frozen(net: FeatureNet) -> FeatureNet:
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def _tensors_sha256(tensors: Sequence[Tensor]) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class RandomMultiScale(FeatureNet):
    """One bank of random 5x5 filters + ReLU on every level of an image pyramid (Ustyuzhaninov et al. 2017)."""

    name = "random"
    in_channels = 3
    SEED = 2017  # fixed: the network is part of the method, not of a run, so ``seed=`` does not change it

    def __init__(self, levels: int = 6, filters: int = 128, kernel: int = 5):
        super().__init__()
        generator = torch.Generator().manual_seed(self.SEED)  # on the CPU: the same numbers on every machine
        # Zero-mean Gaussian filters with variance 1/fan_in keep every level's responses at the same scale.
        weight = torch.randn(levels, filters, 3, kernel, kernel, generator=generator) / (3 * kernel * kernel) ** 0.5
        self.register_buffer("weight", weight)
        self.kernel = kernel
        self.strides = {f"scale{level}": 2**level for level in range(levels)}
        self.content_layers = (f"scale{min(3, levels - 1)}",)
        self.style_layers = self.layers
        self.weights_sha256 = _tensors_sha256([weight])

    def downsample(self, x: Tensor) -> Tensor:
        """The next octave of a Gaussian pyramid: a binomial [1, 4, 6, 4, 1] / 16 blur, then every second pixel.
        (A 2x2 average would pass each coarse level's gradient back as flat 2^l-pixel blocks, which then show.)"""
        taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=x.device, dtype=x.dtype) / 16
        channels = x.shape[1]
        x = F.pad(x, (2, 2, 2, 2), mode="reflect")
        x = F.conv2d(x, taps.view(1, 1, 1, 5).expand(channels, 1, 1, 5), stride=(1, 2), groups=channels)
        return F.conv2d(x, taps.view(1, 1, 5, 1).expand(channels, 1, 5, 1), stride=(2, 1), groups=channels)

    def features(self, images: Tensor, wanted: set[str]) -> dict[str, Tensor]:
        x, out = (images - 0.5) / 0.25, {}  # roughly unit variance for natural images in [0, 1]
        pad = self.kernel // 2
        for level, name in enumerate(self.layers):
            if not wanted - set(out):
                break
            if level:
                x = self.downsample(x)
            if name in wanted:
                # Reflected borders: every pixel is seen by as many filter positions as any other.
                out[name] = F.relu(F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), self.weight[level]))
        return out


class VGG19Features(FeatureNet):
    """torchvision's VGG-19 convolutional part, with Gatys et al.'s layers: content relu4_2, style relu1_1..relu5_1."""

    name = "vgg19"
    in_channels = 3
    content_layers = ("relu4_2",)
    style_layers = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    MEAN = (0.485, 0.456, 0.406)  # the ImageNet statistics torchvision's weights were trained with
    STD = (0.229, 0.224, 0.225)

    def __init__(self, weights: str | Path):
        from torchvision.models.vgg import cfgs, make_layers

        super().__init__()
        self.body = make_layers(cfgs["E"])  # vgg19().features, without building the unused 120M-weight classifier
        self.weights_sha256 = _load_vgg_weights(self.body, Path(weights).expanduser())
        self.names, self.strides = [], {}
        block, index, stride = 1, 1, 1
        for module in self.body:
            if isinstance(module, nn.Conv2d):
                name = f"conv{block}_{index}"
            elif isinstance(module, nn.ReLU):
                name, index = f"relu{block}_{index}", index + 1
                module.inplace = False  # a kept feature map must not be overwritten by the next layer
            else:
                name, block, index, stride = f"pool{block}", block + 1, 1, stride * 2
            self.names.append(name)
            self.strides[name] = stride
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1))

    def features(self, images: Tensor, wanted: set[str]) -> dict[str, Tensor]:
        x, out = (images - self.mean) / self.std, {}
        for name, module in zip(self.names, self.body):
            if not wanted - set(out):
                break  # the layers below the deepest one asked for are never run
            x = module(x)
            if name in wanted:
                out[name] = x
        return out


def _load_vgg_weights(body: nn.Sequential, path: Path) -> str:
    """Load torchvision's VGG-19 ``features.*`` weights from ``path`` into ``body``; the file's sha256."""
    from genbench.metrics.classifier import sha256_file

    if not path.is_file():
        raise GenbenchError(f"weights={path}: no such file (network=vgg19 needs torchvision's VGG-19 weights on disk, "
                            "e.g. vgg19-dcbb9e9d.pth; they cannot be downloaded here)")  # fmt: skip
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a state_dict torch can read
        raise GenbenchError(f"weights={path} is not a torch state_dict file ({str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(state, dict):
        raise GenbenchError(f"weights={path} holds a {type(state).__name__}, not a state_dict of VGG-19 weights")
    prefix = "features."
    ours = {k[len(prefix):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
    expected = body.state_dict()
    missing = [k for k in expected if k not in ours]
    if missing:
        raise GenbenchError(f"weights={path} lacks {len(missing)} of VGG-19's {len(expected)} feature tensors "
                            f"(first: {prefix}{missing[0]}); expected torchvision's vgg19 state_dict")  # fmt: skip
    bad = [k for k, v in expected.items() if not isinstance(ours[k], Tensor) or ours[k].shape != v.shape]
    if bad:
        raise GenbenchError(f"weights={path}: {prefix}{bad[0]} has shape {tuple(getattr(ours[bad[0]], 'shape', ()))}, "
                            f"VGG-19 expects {tuple(expected[bad[0]].shape)}")  # fmt: skip
    body.load_state_dict({k: ours[k].float() for k in expected})
    return sha256_file(path)


class ClassifierFeatures(FeatureNet):
    """genbench's Fashion-MNIST classifier's convolutional stages, run on the image at its own size (grey)."""

    name = "fmnist_classifier"
    in_channels = 1
    content_layers = ("block4",)
    style_layers = ("block1", "block2", "block3", "block4")

    def __init__(self, weights: str | Path | None = None):
        from genbench.metrics.classifier import load_classifier

        super().__init__()
        classifier, self.weights_sha256 = load_classifier(weights)
        # body: (conv-bn-relu) x2, pool, (conv-bn-relu) x2, pool, flatten; the flattening stages need 28x28 inputs.
        self.stages = nn.ModuleList(list(classifier.body)[:6])
        self.names = ("block1", "block2", "pool1", "block3", "block4", "pool2")
        self.strides = {"block1": 1, "block2": 1, "block3": 2, "block4": 2}

    def features(self, images: Tensor, wanted: set[str]) -> dict[str, Tensor]:
        from genbench.metrics.classifier import PIXEL_MEAN, PIXEL_STD

        x, out = (images - PIXEL_MEAN) / PIXEL_STD, {}
        for name, stage in zip(self.names, self.stages):
            if not wanted - set(out):
                break
            x = stage(x)
            if name in wanted:
                out[name] = x
        return out


def build_network(name: str, weights: str | None, device: torch.device) -> FeatureNet:
    """The feature network ``network=name``, frozen, on ``device``; ``weights=`` only where the network loads any."""
    if name == "random":
        if weights is not None:
            raise GenbenchError(f"weights={weights}: network=random has no weights to load (its filters come from a "
                                "fixed seed); drop weights= or choose network=vgg19")  # fmt: skip
        net = RandomMultiScale()
    elif name == "vgg19":
        if weights is None:
            raise GenbenchError("network=vgg19 needs weights=PATH: torchvision's VGG-19 state_dict on disk (e.g. "
                                "vgg19-dcbb9e9d.pth); it cannot be downloaded here")  # fmt: skip
        net = VGG19Features(weights)
    elif name == "fmnist_classifier":
        net = ClassifierFeatures(weights)
    else:
        raise GenbenchError(f"network={name}; expected one of {', '.join(NETWORKS)}")
    return _frozen(net).to(device)
