"""Train the label-free Fashion-MNIST extractor that ships in ``genbench/assets`` (``metrics.extractor=fmnist_ssl``).

    python -m genbench.metrics.train_ssl [--epochs 12] [--seed 0] [--out DIR] [--root IDX_DIR]

SimCLR on the training split's 60,000 images, labels never read while training (see :mod:`genbench.metrics.ssl`):
two views per image, a 128-128-64 projection head on the encoder's features (dropped afterwards: only the encoder
ships), the NT-Xent loss, AdamW with a one-cycle learning rate. Seeded and deterministic on a CPU with the same
thread count. Then the frozen features are measured with labels: k-NN (k=20, cosine) and a linear probe, trained
on the training split and tested on the test split, for this encoder and, beside it, the shipped classifier's
features. Writes ``fmnist_ssl.pt`` (float32 state dict) and ``fmnist_ssl.json`` (sha256, the accuracies, command,
seed, training time) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import nn

from genbench.data.idx import find_root, split_tensors
from genbench.errors import GenbenchError, user_errors
from genbench.files import atomic_open, write_json
from genbench.metrics.classifier import ASSETS, PIXEL_MEAN, PIXEL_STD, sha256_file
from genbench.metrics.extractors import FMNIST, FMNIST_SSL, build_extractor
from genbench.metrics.ssl import SSLEncoder, knn_accuracy, linear_probe_accuracy, nt_xent, views
from genbench.metrics.train_classifier import training_progress


def projector(feature_dim: int, out_dim: int = 64) -> nn.Sequential:
    return nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(inplace=True), nn.Linear(feature_dim, out_dim))


def train(
    images: torch.Tensor, epochs: int, seed: int, batch_size: int, lr: float, width: int, temperature: float
) -> tuple[SSLEncoder, float, list[float]]:
    """Train from scratch on uint8 (N, 1, 28, 28) images; returns the encoder (eval mode), the training seconds
    and the mean loss of each epoch."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    generator = torch.Generator().manual_seed(seed)
    pixels = images.float() / 255.0
    encoder = SSLEncoder(width=width)
    head = projector(encoder.embed[0].out_features)
    parameters = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-4)
    steps_per_epoch = len(pixels) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    losses = []
    start = time.perf_counter()
    with training_progress() as progress:
        task = progress.add_task("train SSL extractor", total=epochs * steps_per_epoch, info="")
        for epoch in range(epochs):
            encoder.train(), head.train()
            order = torch.randperm(len(pixels), generator=generator)
            total = 0.0
            for step in range(steps_per_epoch):
                batch = pixels[order[step * batch_size : (step + 1) * batch_size]]
                pair = torch.cat([views(batch, generator), views(batch, generator)])
                z = head(encoder((pair - PIXEL_MEAN) / PIXEL_STD))
                loss = nt_xent(z[:batch_size], z[batch_size:], temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item()
                progress.update(task, advance=1, info=f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f}")
            losses.append(round(total / steps_per_epoch, 4))
            if not progress.console.is_terminal:  # logs get one line per epoch instead of a bar
                print(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.3f}, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return encoder.eval(), time.perf_counter() - start, losses


def probes(extractor, train_x, train_y, test_x, test_y) -> dict:
    """k-NN and linear-probe test accuracies of an evaluator extractor's features (exactly what it scores with)."""
    train_f, test_f = (extractor.features(x)[extractor.feature_layer] for x in (train_x, test_x))
    return {
        "knn_accuracy": round(knn_accuracy(train_f, train_y, test_f, test_y), 4),
        "linear_probe_accuracy": round(linear_probe_accuracy(train_f, train_y, test_f, test_y), 4),
    }


def without_out(argv: list[str]) -> list[str]:
    """The arguments without ``--out``, which says where the files go and nothing about the weights."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            kept.append(arg)
    return kept


@user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m genbench.metrics.train_ssl", description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256, help="images per step (two views each)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--width", type=int, default=16, help="channels of the first conv stage")
    parser.add_argument("--subset", type=int, default=None, help="train on the first N training images (a quick try)")
    parser.add_argument("--root", default=None, help="folder of Fashion-MNIST IDX .gz files (default: Debian's)")
    parser.add_argument("--out", default=str(ASSETS), help="folder for fmnist_ssl.pt/.json")
    given = argv if argv is not None else sys.argv[1:]
    args = parser.parse_args(given)
    for name in ("epochs", "batch_size", "width"):
        if getattr(args, name) < 1:
            raise GenbenchError(f"--{name.replace('_', '-')} must be at least 1")
    root = find_root(args.root)
    if root is None:
        raise GenbenchError("Fashion-MNIST IDX files not found: pass --root DIR (a folder holding the four .gz files)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train_x, train_y = split_tensors(root, "train")
    test_x, test_y = split_tensors(root, "test")
    used = train_x if args.subset is None else train_x[: args.subset]
    encoder, seconds, losses = train(used, args.epochs, args.seed, args.batch_size, args.lr, args.width, args.temperature)
    weights = out / "fmnist_ssl.pt"
    with atomic_open(weights, "wb") as f:
        torch.save({"arch": {"width": args.width}, "state_dict": encoder.state_dict()}, f)
    started = time.perf_counter()
    ssl_features = build_extractor(FMNIST_SSL, 1, extractor_weights=str(weights))
    classifier = build_extractor(FMNIST, 1)
    record = {
        "sha256": sha256_file(weights),
        "method": "SimCLR (NT-Xent), Fashion-MNIST training split, no labels",
        **probes(ssl_features, train_x, train_y, test_x, test_y),
        "probe": "frozen features; k-NN: k=20, cosine, training split as the bank; linear probe: multinomial "
                 "logistic regression, L-BFGS, L2 1e-4, standardised features; both tested on t10k (10,000 images)",
        "classifier": {"sha256": classifier.weights_sha256, **probes(classifier, train_x, train_y, test_x, test_y)},
        "probe_seconds": None,
        "feature_dim": encoder.embed[0].out_features,
        "parameters": sum(p.numel() for p in encoder.parameters()),
        "command": " ".join(["python -m genbench.metrics.train_ssl", *map(shlex.quote, without_out(given))]),
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "temperature": args.temperature,
        "width": args.width,
        "train_images": len(used),
        "epoch_losses": losses,
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    record["probe_seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / "fmnist_ssl.json", record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
