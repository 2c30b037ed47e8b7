"""Train the Fashion-MNIST feature extractor that ships in ``genbench/assets``.

    python -m genbench.metrics.train_classifier [--epochs 6] [--seed 0] [--out DIR] [--root IDX_DIR]

Seeded and deterministic on CPU. Light augmentation (horizontal flips and shifts of up to 2 pixels), AdamW with a
one-cycle learning rate. One image in ``--junk-every`` per batch is synthetic junk labelled "not a garment" (see
:mod:`genbench.metrics.classifier`). Writes ``fmnist_classifier.pt`` (float32 state dict) and ``fmnist_classifier.json``
(sha256 of the weights, test accuracy, command, seed, training time) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from genbench.data.idx import find_root, split_tensors
from genbench.errors import GenbenchError, user_errors
from genbench.files import atomic_open, write_json
from genbench.metrics.classifier import ASSETS, JUNK_CLASS, PIXEL_MEAN, PIXEL_STD, FashionClassifier, sha256_file, to_grey28

SHIFT = 2  # pixels of random translation


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and random shift (zero padding) of each image in a (N, 1, H, W) batch."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (SHIFT, SHIFT, SHIFT, SHIFT), value=float(x.min()))
    dy = torch.randint(0, 2 * SHIFT + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * SHIFT + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (N, 1, W)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def junk(n: int, generator: torch.Generator, size: int = 28) -> torch.Tensor:
    """``n`` normalised non-garment images: uniform noise, Gaussian noise, smooth blobs or flat grey, in equal odds."""
    shape = (n, 1, size, size)
    level = torch.rand(n, 1, 1, 1, generator=generator)
    spread = torch.rand(n, 1, 1, 1, generator=generator) * 0.5
    kinds = torch.stack(
        [
            torch.rand(shape, generator=generator),
            (level + spread * torch.randn(shape, generator=generator)).clamp(0, 1),
            F.interpolate(torch.rand(n, 1, 7, 7, generator=generator), size=size, mode="bilinear", align_corners=False),
            level.expand(shape),
        ]
    )
    pick = torch.randint(0, len(kinds), (n,), generator=generator)
    return (kinds[pick, torch.arange(n)] - PIXEL_MEAN) / PIXEL_STD


@torch.no_grad()
def accuracy(model: FashionClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on uint8 images (N, 1, 28, 28)."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        _, logits = model(to_grey28(images[start : start + batch_size]))
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(images)


def training_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
    )


def train(
    root: Path, epochs: int, seed: int, batch_size: int, lr: float, width: int, junk_every: int
) -> tuple[FashionClassifier, float, float]:
    """Train from scratch; returns the model (eval mode), its test accuracy and the training seconds."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    generator = torch.Generator().manual_seed(seed)
    train_images, train_labels = split_tensors(root, "train")
    test_images, test_labels = split_tensors(root, "test")
    inputs = to_grey28(train_images)  # normalise once; augmentation works on normalised floats

    model = FashionClassifier(width=width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps_per_epoch = len(inputs) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    start = time.perf_counter()
    with training_progress() as progress:
        task = progress.add_task("train classifier", total=epochs * steps_per_epoch, info="")
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(inputs), generator=generator)
            for step in range(steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                n_junk = batch_size // junk_every
                batch = torch.cat([augment(inputs[idx], generator), junk(n_junk, generator)])
                labels = torch.cat([train_labels[idx], torch.full((n_junk,), JUNK_CLASS)])
                _, logits = model(batch)
                loss = F.cross_entropy(logits, labels, label_smoothing=0.05)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                progress.update(task, advance=1, info=f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f}")
            if not progress.console.is_terminal:  # logs get one line per epoch instead of a bar
                print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, {time.perf_counter() - start:.0f} s", file=sys.stderr)
        seconds = time.perf_counter() - start
        test_accuracy = accuracy(model, test_images, test_labels)
    return model.eval(), test_accuracy, seconds


@user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m genbench.metrics.train_classifier", description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--width", type=int, default=16, help="channels of the first conv stage")
    parser.add_argument("--junk-every", type=int, default=8, help="one junk image per this many real ones")
    parser.add_argument("--root", default=None, help="folder of Fashion-MNIST IDX .gz files (default: Debian's)")
    parser.add_argument("--out", default=str(ASSETS), help="folder for fmnist_classifier.pt/.json")
    given = argv if argv is not None else sys.argv[1:]
    args = parser.parse_args(given)
    root = find_root(args.root)
    if root is None:
        raise GenbenchError("Fashion-MNIST IDX files not found: pass --root DIR (a folder holding the four .gz files)")

    model, test_accuracy, seconds = train(root, args.epochs, args.seed, args.batch_size, args.lr, args.width, args.junk_every)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "fmnist_classifier.pt"
    with atomic_open(weights, "wb") as f:
        torch.save({"arch": {"width": args.width, "num_classes": model.head.out_features}, "state_dict": model.state_dict()}, f)
    record = {
        "sha256": sha256_file(weights),
        "test_accuracy": round(test_accuracy, 4),
        "test_split": "Fashion-MNIST t10k (10,000 images)",
        "feature_dim": model.head.in_features,
        "parameters": sum(p.numel() for p in model.parameters()),
        "command": " ".join(["python -m genbench.metrics.train_classifier", *map(shlex.quote, given)]),
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "width": args.width,
        "junk_every": args.junk_every,
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    record_path = out / "fmnist_classifier.json"
    write_json(record_path, record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
