"""Regenerate results/stylize/: one `python -m genbench.stylize` run on two photos, and the content | style | result
figure. Run from the repository root: `python experiments/stylize/figure.py [key=value ...]` (extra stylize keys).

The photos are the ones already installed with genbench's environment: matplotlib's sample photo of Grace Hopper
(content) and scikit-learn's sample photo of a dahlia (style); README "Neural style transfer" has their sources and
licences.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import cbook  # noqa: E402
from PIL import Image  # noqa: E402

OUT = Path("results/stylize")


def photos() -> tuple[Path, Path]:
    content = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    try:
        import sklearn
    except ImportError:
        sys.exit("experiments/stylize/figure.py: the style photo comes with scikit-learn (pip install scikit-learn)")
    return content, Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg"


def main() -> None:
    content, style = photos()
    OUT.mkdir(parents=True, exist_ok=True)
    result = OUT / "result.png"
    command = [sys.executable, "-m", "genbench.stylize", f"content={content}", f"style={style}", f"out={result}",
               *sys.argv[1:]]  # fmt: skip
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(run.stderr)
    print(run.stdout.strip().splitlines()[-1])
    print(f"command wall time: {seconds:.1f} s")

    panels = [("content", content), ("style", style), ("result (network=random)", result)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (title, path) in zip(axes, panels):
        with Image.open(path) as im:
            im.thumbnail((384, 384))
            ax.imshow(im.convert("RGB"))
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(OUT / "figure.jpg", dpi=100, pil_kwargs={"quality": 85})
    print(f"wrote {OUT / 'figure.jpg'} and {result}")


if __name__ == "__main__":
    main()
