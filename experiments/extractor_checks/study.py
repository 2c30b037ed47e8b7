"""What each offline feature space measures: class frequency, and the disturbances that make images worse.

Two checks of genbench's two Fashion-MNIST extractors, the label-trained classifier (``fmnist_classifier``) and the
label-free SimCLR encoder (``fmnist_ssl``), both scoring FID against the 10,000 test images:

1. **Class histogram** (Kynkäänniemi et al. 2023). A fixed pool of generated images per family (and, as a control,
   a pool of real training images) is resampled, never altered, so that its class histogram (by the classifier's
   labels) matches the test set's, and, the other way, skewed (1.5x the first five classes, 0.5x the others).
   A feature space whose FID moves much more than the subset-to-subset spread is measuring class frequency.
2. **Disturbance curves** (Heusel et al. 2017). Real training images made worse at growing levels: Gaussian noise,
   Gaussian blur, black rectangles, swirl, salt-and-pepper, and images of other datasets mixed in (handwritten
   digits and natural-photo crops that ship with scikit-learn; ``--outliers`` adds any folder or .npz). A good
   feature space's FID grows with each.

    python experiments/extractor_checks/study.py --sweep runs/fashion_mnist_default --out results/extractor_checks

``make run`` makes the sweep. FIDs come from genbench's own formula (``genbench.metrics.fidelity.fid``, checked
against torchmetrics in the test suite) on 1,000 images, so they are biased upward like the default table's: compare
within a column of one extractor, not across extractors (their scales differ; the figure normalises each curve).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from torchvision.transforms.functional import gaussian_blur  # noqa: E402

from genbench.data.idx import find_root, load_split  # noqa: E402
from genbench.imageio import load_images, make_grid  # noqa: E402
from genbench.metrics.classifier import JUNK_CLASS  # noqa: E402
from genbench.metrics.evaluator import model_sampler, sample_images  # noqa: E402
from genbench.metrics.extractors import build_extractor  # noqa: E402
from genbench.metrics.fidelity import fid  # noqa: E402
from genbench.models import load_checkpoint  # noqa: E402
from genbench.report import portable_path  # noqa: E402

EXTRACTORS = ("fmnist_classifier", "fmnist_ssl")
LEVELS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
DISTURBANCES = ("gaussian noise", "gaussian blur", "black rectangles", "swirl", "salt and pepper", "digits mixed in",
                "photo crops mixed in")  # fmt: skip
SKEW = (1.5,) * 5 + (0.5,) * 5  # class weights of the skewed histogram (classes 0-4, then 5-9)


# ---------------------------------------------------------------------------------------------- disturbances
def swirl(x: torch.Tensor, strength: float, radius: float = 10.0) -> torch.Tensor:
    """Rotate each pixel about the centre by ``strength * exp(-r / radius)`` radians (r in pixels): the swirl of
    Heusel et al., as one resampling (bilinear) of the whole batch."""
    n, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    r_pixels = torch.sqrt(xs**2 + ys**2) * (h / 2)
    angle = strength * torch.exp(-r_pixels / radius)
    grid = torch.stack([xs * torch.cos(angle) - ys * torch.sin(angle), xs * torch.sin(angle) + ys * torch.cos(angle)], -1)
    return F.grid_sample(x, grid.expand(n, -1, -1, -1), mode="bilinear", padding_mode="zeros", align_corners=True)


def outlier_sets(extra: Path | None) -> dict[str, torch.Tensor]:
    """Images of other datasets, uint8 (N, 1, 28, 28), that need no download: scikit-learn's 8x8 handwritten digits
    (UCI, 1,797 images, white on black like Fashion-MNIST) blown up to 28 px, and 28 px grey crops of its two
    sample photographs; plus ``extra`` (a folder of PNGs or an .npz), converted the same way."""
    from sklearn.datasets import load_digits, load_sample_images

    digits = torch.from_numpy(load_digits().images).float().unsqueeze(1) / 16
    digits = F.interpolate(digits, size=(20, 20), mode="bilinear", align_corners=False)
    digits = F.pad(digits, (4, 4, 4, 4))  # MNIST's framing: a 20 px glyph in a 28 px field
    rng = np.random.default_rng(0)
    crops = []
    for photo in load_sample_images().images:
        grey = photo @ np.array([0.299, 0.587, 0.114])
        for _ in range(1000):
            top, left = rng.integers(0, grey.shape[0] - 84), rng.integers(0, grey.shape[1] - 84)
            crops.append(grey[top : top + 84 : 3, left : left + 84 : 3])  # 84 px seen at 28 px
    sets = {"digits mixed in": digits, "photo crops mixed in": torch.from_numpy(np.stack(crops)).float().unsqueeze(1) / 255}
    if extra is not None:
        images, _ = load_images(extra)
        grey = images.float().mean(dim=1, keepdim=True) / 255
        sets[f"{Path(extra).name} mixed in"] = F.interpolate(grey, size=(28, 28), mode="bilinear", antialias=True)
    return {name: (x.clamp(0, 1) * 255).round().to(torch.uint8) for name, x in sets.items()}


def disturb(images: torch.Tensor, kind: str, level: float, outliers: dict[str, torch.Tensor], seed: int) -> torch.Tensor:
    """uint8 (N, 1, 28, 28) images disturbed by ``kind`` at ``level`` in [0, 1] (0: unchanged), seeded."""
    if level == 0:
        return images
    g = torch.Generator().manual_seed(seed)
    x = images.float() / 255
    n = len(x)
    if kind == "gaussian noise":  # standard deviation up to half the pixel range
        x = x + 0.5 * level * torch.randn(x.shape, generator=g)
    elif kind == "gaussian blur":  # sigma up to 2.5 px
        sigma = 2.5 * level
        x = gaussian_blur(x, kernel_size=2 * math.ceil(3 * sigma) + 1, sigma=sigma)
    elif kind == "black rectangles":  # five per image, sides up to 9 px
        side = max(1, round(9 * level))
        for _ in range(5):
            top = torch.randint(0, 28 - side + 1, (n,), generator=g)
            left = torch.randint(0, 28 - side + 1, (n,), generator=g)
            rows = torch.arange(28).view(1, 28, 1)
            cols = torch.arange(28).view(1, 1, 28)
            inside = ((rows >= top.view(n, 1, 1)) & (rows < (top + side).view(n, 1, 1)) &
                      (cols >= left.view(n, 1, 1)) & (cols < (left + side).view(n, 1, 1)))  # fmt: skip
            x = x.masked_fill(inside.unsqueeze(1), 0.0)
    elif kind == "swirl":  # up to 6 radians at the centre
        x = swirl(x, 6.0 * level)
    elif kind == "salt and pepper":  # up to 30% of the pixels
        hit = torch.rand(x.shape, generator=g) < 0.3 * level
        x = torch.where(hit, (torch.rand(x.shape, generator=g) < 0.5).float(), x)
    elif kind in outliers:  # up to half the images replaced by another dataset's
        count = round(0.5 * level * n)
        chosen = torch.randperm(n, generator=g)[:count]
        pool = outliers[kind]
        picks = pool[torch.randint(0, len(pool), (count,), generator=g)]
        out = images.clone()
        out[chosen] = picks
        return out
    else:
        raise ValueError(kind)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


# ---------------------------------------------------------------------------------------------- class histogram
def by_histogram(labels: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, int]:
    """Indices of ``counts[c]`` images predicted as class c, each class's first ones in pool order (no selection by
    anything but the label); a class the pool holds too few of is repeated (with replacement). Also the number of
    repeated picks."""
    picked, repeated = [], 0
    for c, count in enumerate(counts):
        members = torch.nonzero(labels == c).flatten()
        if len(members) == 0:
            raise SystemExit(f"the pool holds no image the classifier calls class {c}: use a larger --pool")
        if len(members) < count:
            repeated += count - len(members)
        picked.append(members[torch.arange(count) % len(members)])
    return torch.cat(picked), repeated


def histogram_check(pool: torch.Tensor, labels: torch.Tensor, n: int, features: dict, references: dict, seed: int,
                    subsets: int) -> dict:  # fmt: skip
    """FID of a random n-subset, of the histogram-matched and of the skewed resampling, and the spread over random
    subsets, per extractor; ``features``: each extractor's features of the whole pool."""
    matched, matched_repeats = by_histogram(labels, [n // 10] * 10)
    skewed, skewed_repeats = by_histogram(labels, [round(n / 10 * w) for w in SKEW])
    g = torch.Generator().manual_seed(seed)
    random_sets = [torch.randperm(len(pool), generator=g)[:n] for _ in range(subsets)]
    out = {"pool": len(pool), "n": n, "predicted_histogram": torch.bincount(labels, minlength=11).tolist(),
           "matched_repeats": matched_repeats, "skewed_repeats": skewed_repeats}  # fmt: skip
    for name, (layer, feats) in features.items():
        score = lambda idx: fid({layer: feats[idx]}, references[name], layer)  # noqa: E731
        randoms = [score(idx) for idx in random_sets]
        out[name] = {"random": float(np.mean(randoms)), "random_std": float(np.std(randoms, ddof=1)),
                     "matched": score(matched), "skewed": score(skewed)}  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------- figures
def disturbance_figure(curves: dict, out: Path) -> Path:
    kinds = list(next(iter(curves.values())))
    cols = 4
    rows = math.ceil(len(kinds) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.7 * rows), squeeze=False)
    styles = {"fmnist_classifier": ("tab:blue", "o", "classifier (labels)"), "fmnist_ssl": ("tab:orange", "s", "SimCLR (no labels)")}
    for ax, kind in zip(axes.flat, kinds):
        for name, by_kind in curves.items():
            values = np.array(by_kind[kind])
            colour, marker, label = styles[name]
            ax.plot(LEVELS, values / values[-1], marker=marker, color=colour, label=label)
        ax.set_title(kind, fontsize=10)
        ax.set_xlabel("disturbance level")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(kinds) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel("FID / FID at level 1")
    axes[0, 0].legend(fontsize=8)
    figure.suptitle("FID of disturbed real images against the test set, per feature space (Heusel et al.'s check)")
    figure.tight_layout()
    path = out / "disturbances.png"
    figure.savefig(path, dpi=130)
    plt.close(figure)
    return path


def examples_figure(images: torch.Tensor, outliers: dict, out: Path) -> Path:
    """One training image under each disturbance and level; for the mixing rows, images of the set mixed in (a
    level replaces that share of the 1,000 images, up to half)."""
    rows = []
    for kind in DISTURBANCES:
        if kind in outliers:
            rows.append(outliers[kind][torch.linspace(0, len(outliers[kind]) - 1, len(LEVELS)).long()])
        else:
            rows.append(torch.stack([disturb(images[:1], kind, level, outliers, 7)[0] for level in LEVELS]))
    grid = make_grid(torch.cat(rows), nrow=len(LEVELS))
    figure, ax = plt.subplots(figsize=(len(LEVELS) * 0.9 + 1.8, len(DISTURBANCES) * 0.9 + 0.6))
    ax.imshow(grid.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=255)
    ax.set_xticks([(i + 0.5) * grid.shape[-1] / len(LEVELS) for i in range(len(LEVELS))], [f"{v:g}" for v in LEVELS])
    ax.set_yticks([(i + 0.5) * grid.shape[-2] / len(DISTURBANCES) for i in range(len(DISTURBANCES))], DISTURBANCES)
    ax.set_xlabel("level (mixing rows: examples of the images mixed in)")
    ax.set_title("Disturbances of one training image", fontsize=9)
    figure.tight_layout()
    path = out / "disturbance_examples.png"
    figure.savefig(path, dpi=130)
    plt.close(figure)
    return path


def histogram_figure(checks: dict, out: Path) -> Path:
    """FID change of each resampling, in FID points of each extractor (both spaces spread the five families' FIDs
    about equally: the caption of results/extractor_checks gives the standard deviations)."""
    sets = list(checks)
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    width = 0.38
    for ax, change in zip(axes, ("matched", "skewed")):
        for k, (name, colour) in enumerate((("fmnist_classifier", "tab:blue"), ("fmnist_ssl", "tab:orange"))):
            shift = [checks[s][name][change] - checks[s][name]["random"] for s in sets]
            spread = [checks[s][name]["random_std"] for s in sets]
            xs = np.arange(len(sets)) + (k - 0.5) * width
            ax.bar(xs, shift, width, color=colour, label={"fmnist_classifier": "classifier (labels)",
                                                          "fmnist_ssl": "SimCLR (no labels)"}[name])  # fmt: skip
            ax.errorbar(xs, [0] * len(sets), yerr=spread, fmt="none", ecolor="black", capsize=3, lw=1)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(np.arange(len(sets)), sets, rotation=20)
        ax.set_title({"matched": "resampled to the test set's class histogram",
                      "skewed": "resampled to a skewed histogram (1.5x / 0.5x)"}[change], fontsize=10)  # fmt: skip
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("FID change against a random subset")
    axes[0].legend(fontsize=8)
    figure.suptitle("Same images, other class frequencies (by the classifier's labels): how far FID moves "
                    "(whiskers: ± std over random subsets)", fontsize=10)  # fmt: skip
    figure.tight_layout()
    path = out / "class_histogram.png"
    figure.savefig(path, dpi=130)
    plt.close(figure)
    return path


def table(checks: dict, curves: dict, monotone: dict) -> str:
    lines = ["**Class histogram.** FID of 1,000 images against the 10,000 test images: a random subset of the pool "
             "(mean ± std over subsets), and the change when the same pool is resampled to the test set's class "
             "histogram (matched) or to a skewed one, by the classifier's labels.", "",
             "| images | extractor | FID, random subset | matched | skewed |", "|---|---|---:|---:|---:|"]  # fmt: skip
    for label, check in checks.items():
        for name in EXTRACTORS:
            c = check[name]
            rel = lambda v: f"{v - c['random']:+.2f} ({100 * (v - c['random']) / c['random']:+.1f}%)"  # noqa: E731
            lines.append(f"| {label} | {name} | {c['random']:.2f} ± {c['random_std']:.2f} | {rel(c['matched'])} | "
                         f"{rel(c['skewed'])} |")  # fmt: skip
    lines += ["", "**Disturbances.** FID of 1,000 disturbed training images against the test images at levels "
              f"{', '.join(f'{v:g}' for v in LEVELS)}; ρ: Spearman's rank correlation of FID with the level (1: rises "
              "at every step).", "", "| disturbance | extractor | FID by level | ρ |", "|---|---|---|---:|"]  # fmt: skip
    for kind in next(iter(curves.values())):
        for name in EXTRACTORS:
            values = " → ".join(f"{v:.1f}" for v in curves[name][kind])
            lines.append(f"| {kind} | {name} | {values} | {monotone[name][kind]:.2f} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main
def runs_of(sweep: Path) -> dict[str, Path]:
    found = {}
    for record in sorted(sweep.glob("*/run.json")):
        found[json.loads(record.read_text())["family"]] = record.parent / "checkpoints" / "last.ckpt"
    if not found:
        raise SystemExit(f"no runs under {sweep} (make run writes runs/fashion_mnist_default)")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", type=Path, default=Path("runs/fashion_mnist_default"))
    parser.add_argument("--out", type=Path, default=Path("results/extractor_checks"))
    parser.add_argument("--pool", type=int, default=3000, help="generated images per family to resample from")
    parser.add_argument("--n", type=int, default=1000, help="images per FID")
    parser.add_argument("--subsets", type=int, default=5, help="random subsets for the spread")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--outliers", type=Path, default=None, help="another dataset to mix in: a folder of PNGs or .npz")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    root = find_root(None)
    test_x, _ = load_split(root, "test")
    train_x, _ = load_split(root, "train")
    test = torch.from_numpy(np.array(test_x)).unsqueeze(1)
    train = torch.from_numpy(np.array(train_x)).unsqueeze(1)
    extractors = {name: build_extractor(name, 1) for name in EXTRACTORS}
    references = {name: e.features(test) for name, e in extractors.items()}
    classifier = extractors["fmnist_classifier"]

    def features(images: torch.Tensor) -> dict:
        return {name: (e.feature_layer, e.features(images)[e.feature_layer]) for name, e in extractors.items()}

    def labels(images: torch.Tensor) -> torch.Tensor:
        return classifier.features(images)[classifier.isc_layer].argmax(1)

    # 1. class histogram: real training images as the control, then each family's pool
    g = torch.Generator().manual_seed(args.seed)
    real_pool = train[torch.randperm(len(train), generator=g)[: args.pool]]
    pools = {"real (train split)": real_pool}
    samplers = {}
    for family, ckpt in runs_of(args.sweep).items():
        model, run_cfg = load_checkpoint(ckpt, map_location="cpu")
        settings = model_sampler(model, run_cfg.get("sampler"))
        samplers[family] = settings
        print(f"sampling {args.pool} images from {family} ({settings or 'one pass'})", flush=True)
        pools[family], _ = sample_images(model.eval(), args.pool, 250, args.seed, settings, torch.device("cpu"))
    checks = {}
    for label, pool in pools.items():
        predicted = labels(pool)
        checks[label] = histogram_check(pool, predicted, args.n, features(pool), references, args.seed, args.subsets)
        junk = int((predicted == JUNK_CLASS).sum())
        checks[label]["called_not_a_garment"] = junk
        print(label, {name: {k: round(v, 2) for k, v in checks[label][name].items()} for name in EXTRACTORS}, flush=True)

    # 2. disturbance curves on real training images (not the reference)
    base = train[torch.randperm(len(train), generator=g)[: args.n]]
    outliers = outlier_sets(args.outliers)
    kinds = list(DISTURBANCES) + [k for k in outliers if k not in DISTURBANCES]
    curves = {name: {} for name in EXTRACTORS}
    for kind in kinds:
        for level in LEVELS:
            disturbed = disturb(base, kind, level, outliers, args.seed + 1)
            for name, (layer, feats) in features(disturbed).items():
                curves[name].setdefault(kind, []).append(fid({layer: feats}, references[name], layer))
        print(kind, {name: [round(v, 1) for v in curves[name][kind]] for name in EXTRACTORS}, flush=True)
    families = [label for label in checks if label in samplers]
    family_spread = {name: float(np.std([checks[f][name]["random"] for f in families], ddof=1)) if len(families) > 1
                     else None for name in EXTRACTORS}  # fmt: skip
    monotone = {name: {kind: float(spearmanr(LEVELS, values).statistic) for kind, values in by_kind.items()}
                for name, by_kind in curves.items()}  # fmt: skip

    written = [histogram_figure(checks, args.out), disturbance_figure(curves, args.out),
               examples_figure(base, outliers, args.out)]  # fmt: skip
    (args.out / "table.md").write_text(table(checks, curves, monotone))
    record = {
        "command": "python experiments/extractor_checks/study.py " + " ".join(
            f"--{k} {portable_path(v) if isinstance(v, Path) else v}" for k, v in vars(args).items() if v is not None),
        "sweep": portable_path(args.sweep),
        "extractors": {name: {"sha256": e.weights_sha256} for name, e in extractors.items()},
        "samplers": samplers,
        "levels": list(LEVELS),
        "class_histogram": checks,
        "family_fid_std": family_spread,
        "disturbances": curves,
        "spearman_with_level": monotone,
        "seconds": round(time.perf_counter() - started, 1),
        "files": [p.name for p in written] + ["table.md"],
    }
    (args.out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out} in {record['seconds']:.0f} s")


if __name__ == "__main__":
    main()
