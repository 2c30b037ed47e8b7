"""Realism against faithfulness of image prompts, for every family: SDEdit's trade-off drawn across families.

Held-out test images are degraded three ways (coarse strokes, an occluding rectangle, noise) and given to every run
of a sweep as image prompts at several strengths (``GenerativeModule.from_images``). Each output set is scored for
realism, FID against other test images in genbench's own extractor (the Fashion-MNIST classifier, as the default
table), and for faithfulness to its prompt: SSIM (torchmetrics) and the distance between the extractor's features.
A second part asks whether a class prompt moves an image toward its class: shirts prompted with "Sneaker", and
the share of outputs the classifier calls a sneaker.

    python experiments/image_prompts/study.py --sweep runs/fashion_mnist_default --out results/image_prompts

``make run`` makes the sweep. Every image draws its noise from its own stream (seed, index), so a strength's
outputs differ from the next strength's only by the strength.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchmetrics.functional.image import structural_similarity_index_measure as ssim  # noqa: E402

from genbench.data.idx import CLASS_NAMES, find_root, load_split  # noqa: E402
from genbench.imageio import make_grid, to_uint8  # noqa: E402
from genbench.metrics.extractors import build_extractor  # noqa: E402
from genbench.metrics.fidelity import fid  # noqa: E402
from genbench.models import load_checkpoint  # noqa: E402
from genbench.noise import IndexedNoise  # noqa: E402
from genbench.report import portable_path  # noqa: E402
from genbench.report.figures import family_color  # noqa: E402

DEGRADATIONS = ("strokes", "occluded", "noisy")
BATCH = 250


def degrade(clean: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """uint8 (N, 28, 28) test images made worse, the same way on every machine (a seeded numpy generator).

    strokes: 7x7 block means in three grey levels, blown back up (SDEdit's stroke paintings, in grey); occluded: a
    grey rectangle of 8-14 px sides somewhere on the garment's area; noisy: Gaussian noise of std 0.25 of the range.
    """
    rng = np.random.default_rng(seed)
    x = clean.astype(np.float64) / 255
    if kind == "strokes":
        blocks = x.reshape(-1, 7, 4, 7, 4).mean(axis=(2, 4))
        levels = np.round(blocks * 2) / 2
        out = np.repeat(np.repeat(levels, 4, axis=1), 4, axis=2)
    elif kind == "occluded":
        out = x.copy()
        for image in out:
            h, w = rng.integers(8, 15, size=2)
            top, left = rng.integers(4, 28 - 4 - h + 1), rng.integers(4, 28 - 4 - w + 1)
            image[top : top + h, left : left + w] = 0.5
    elif kind == "noisy":
        out = x + rng.normal(0, 0.25, size=x.shape)
    else:
        raise ValueError(kind)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def runs_of(sweep: Path) -> dict[str, Path]:
    """family -> checkpoint, for every run of the sweep (one per family)."""
    found = {}
    for record in sorted(sweep.glob("*/run.json")):
        family = json.loads(record.read_text())["family"]
        found[family] = record.parent / "checkpoints" / "last.ckpt"
    if not found:
        raise SystemExit(f"no runs under {sweep} (make run writes runs/fashion_mnist_default)")
    return found


def generate(model, prompts: torch.Tensor, strengths, args, labels=None) -> tuple[dict[float, torch.Tensor], float]:
    """strength -> uint8 outputs for ``prompts`` (uint8 (N, 1, 28, 28)), and the mean reconstruction RMSE; a GAN
    inverts once for all strengths."""
    x = prompts.float() / 127.5 - 1
    sampler = {"sampler": args.sampler, "steps": args.steps} if model.takes_sampler else {}
    fit = model.invert_images(x, {"steps": args.inversion_steps}, progress=True) if model.inverts_images else None
    outputs, extra = {}, {}
    for strength in strengths:
        parts = []
        for start in range(0, len(x), BATCH):
            size = min(BATCH, len(x) - start)
            noise = IndexedNoise.range(args.seed, start, size, "cpu")
            part_labels = None if labels is None else labels[start : start + size]
            if fit is not None:
                piece = {k: (v[start : start + size] if torch.is_tensor(v) else v) for k, v in fit.items()}
                result = model.from_inversion(piece, strength, part_labels, noise)
            else:
                result = model.from_images(x[start : start + size], strength, labels=part_labels, generator=noise,
                                           **sampler)  # fmt: skip
            parts.append(to_uint8(result.images))
            extra.setdefault(strength, []).append(result.reconstruction_rmse)
        outputs[strength] = torch.cat(parts)
    return outputs, float(torch.cat(extra[strengths[0]]).mean())


def scores(extractor, outputs: torch.Tensor, prompts: torch.Tensor, clean: torch.Tensor, truth: torch.Tensor,
           reference: dict) -> dict:  # fmt: skip
    made = extractor.features(outputs)
    given = extractor.features(prompts)
    layer = extractor.feature_layer
    as_float = lambda t: t.float() / 255  # noqa: E731
    return {
        "fid": fid(made, reference, layer),
        "ssim_to_prompt": float(ssim(as_float(outputs), as_float(prompts), data_range=1.0)),
        "ssim_to_clean": float(ssim(as_float(outputs), as_float(clean), data_range=1.0)),
        "feature_distance": float((made[layer] - given[layer]).norm(dim=1).mean()),
        "class_kept": float((made[extractor.isc_layer].argmax(1) == truth).float().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=Path("runs/fashion_mnist_default"))
    parser.add_argument("--out", type=Path, default=Path("results/image_prompts"))
    parser.add_argument("--n", type=int, default=500, help="prompt images per degradation (test images 0..n-1)")
    parser.add_argument("--reference", type=int, default=5000, help="FID reference: test images 5000..5000+N-1")
    parser.add_argument("--strengths", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--inversion-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    strengths = [float(s) for s in args.strengths.split(",")]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    began = time.perf_counter()

    test_images, test_labels = load_split(find_root(None), "test")
    clean = torch.from_numpy(test_images[: args.n].copy())[:, None]
    truth = torch.from_numpy(test_labels[: args.n].astype(np.int64))
    extractor = build_extractor("fmnist_classifier", channels=1)
    reference = extractor.features(torch.from_numpy(test_images[5000 : 5000 + args.reference].copy())[:, None])
    prompts = {kind: torch.from_numpy(degrade(test_images[: args.n], kind, args.seed + i))[:, None]
               for i, kind in enumerate(DEGRADATIONS)}  # fmt: skip
    shirts = np.flatnonzero(test_labels == CLASS_NAMES.index("Shirt"))[:100]
    shirt_images = torch.from_numpy(test_images[shirts].copy())[:, None]
    sneaker = CLASS_NAMES.index("Sneaker")

    rows, toward, examples, checkpoints = [], [], {}, {}
    for family, ckpt in runs_of(args.sweep).items():
        model, _ = load_checkpoint(ckpt, map_location="cpu")
        checkpoints[family] = {"run": ckpt.parent.parent.name, "sha256": model.checkpoint_sha256}
        seconds = time.perf_counter()
        for kind in DEGRADATIONS:
            outputs, recon = generate(model, prompts[kind], strengths, args)
            examples[(family, kind)] = torch.stack([outputs[s][:4] for s in strengths], 1)  # (4, strengths, 1, H, W)
            for strength in strengths:
                row = {"family": family, "degradation": kind, "strength": strength, "reconstruction_rmse": recon}
                rows.append(row | scores(extractor, outputs[strength], prompts[kind], clean, truth, reference))
                print(json.dumps(rows[-1]), flush=True)
        checkpoints[family]["seconds"] = round(time.perf_counter() - seconds, 1)
        if model.num_classes is None:  # an unconditional model takes no class prompt
            print(family, checkpoints[family], flush=True)
            continue
        outputs, _ = generate(model, shirt_images, strengths, args, labels=torch.full((len(shirts),), sneaker))
        examples[(family, "shirt to sneaker")] = torch.stack([outputs[s][:4] for s in strengths], 1)
        for strength in strengths:
            called = extractor.features(outputs[strength])[extractor.isc_layer].argmax(1)
            toward.append({"family": family, "strength": strength, "sneaker": float((called == sneaker).float().mean()),
                           "shirt": float((called == CLASS_NAMES.index("Shirt")).float().mean())})  # fmt: skip
        print(family, checkpoints[family], flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    record = {"settings": {k: (portable_path(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "extractor": extractor.name, "extractor_sha256": extractor.weights_sha256, "runs": checkpoints,
              "rows": rows, "class_prompt": toward, "minutes": round((time.perf_counter() - began) / 60, 1)}  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    (args.out / "table.md").write_text(markdown(rows, toward, strengths))
    draw_tradeoff(rows, args.out / "realism_vs_faithfulness.png")
    draw_examples(examples, prompts, shirt_images, strengths, args.out / "examples.png")
    print(f"wrote {args.out} in {record['minutes']} min")


def markdown(rows: list[dict], toward: list[dict], strengths: list[float]) -> str:
    """The study's rows as markdown (a study's own rows: the report's tables are for runs of a sweep)."""
    lines = ["| degradation | family | strength | FID ↓ | SSIM to prompt ↑ | SSIM to clean ↑ | feature distance ↓ | "
             "class kept ↑ | reconstruction RMSE |", "|" + " --- |" * 9]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['degradation']} | {r['family']} | {r['strength']:g} | {r['fid']:.1f} | "
                     f"{r['ssim_to_prompt']:.3f} | {r['ssim_to_clean']:.3f} | {r['feature_distance']:.2f} | "
                     f"{r['class_kept']:.2f} | {r['reconstruction_rmse']:.3f} |")  # fmt: skip
    lines += ["", "Shirts prompted with \"Sneaker\": share the classifier calls a sneaker (a shirt)", "",
              "| family | " + " | ".join(f"s={s:g}" for s in strengths) + " |", "|" + " --- |" * (len(strengths) + 1)]
    for family in dict.fromkeys(t["family"] for t in toward):
        cells = [f"{t['sneaker']:.2f} ({t['shirt']:.2f})" for t in toward if t["family"] == family]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def draw_tradeoff(rows: list[dict], path: Path) -> None:
    """One panel per degradation: SSIM to the prompt (faithfulness) against FID (realism, lower is better), a curve
    per family, each point labelled with its strength."""
    fig, axes = plt.subplots(1, len(DEGRADATIONS), figsize=(5 * len(DEGRADATIONS), 4.2), sharey=True)
    for ax, kind in zip(axes, DEGRADATIONS):
        for family in dict.fromkeys(r["family"] for r in rows):
            points = [r for r in rows if r["family"] == family and r["degradation"] == kind]
            xs, ys = [p["ssim_to_prompt"] for p in points], [p["fid"] for p in points]
            ax.plot(xs, ys, "o-", color=family_color(family), label=family)
            for p in points:
                ax.annotate(f"{p['strength']:g}", (p["ssim_to_prompt"], p["fid"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")  # fmt: skip
        ax.set_title(f"{kind} prompts")
        ax.set_xlabel("faithfulness: SSIM to the prompt →")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("realism: FID to test images (log, lower is better)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Image prompts: realism against faithfulness (labels: strength)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_examples(examples: dict, prompts: dict, shirts: torch.Tensor, strengths: list[float], path: Path) -> None:
    """A grid per family and prompt kind: the prompt, then its outputs at each strength (left to right)."""
    given = {**{kind: prompts[kind][:4] for kind in DEGRADATIONS}, "shirt to sneaker": shirts[:4]}
    kinds = list(given)
    families = list(dict.fromkeys(f for f, _ in examples))
    fig, axes = plt.subplots(len(families), len(kinds), figsize=(2.6 * len(kinds), 2.2 * len(families)))
    axes = np.atleast_2d(axes)
    for i, family in enumerate(families):
        for j, kind in enumerate(kinds):
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if (family, kind) not in examples:  # an unconditional model: no class prompt
                axes[i, j].text(0.5, 0.5, "unconditional:\nno class prompt", ha="center", va="center", fontsize=8)
                continue
            rows = torch.cat([given[kind][:, None], examples[(family, kind)]], 1).flatten(0, 1)
            grid = make_grid(rows, nrow=len(strengths) + 1)
            axes[i, j].imshow(grid[0].numpy(), cmap="gray", vmin=0, vmax=255)
            if i == 0:
                axes[i, j].set_title(f"{kind}: prompt | s = " + ", ".join(f"{s:g}" for s in strengths), fontsize=7)
            if j == 0:
                axes[i, j].set_ylabel(family, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


if __name__ == "__main__":
    main()
