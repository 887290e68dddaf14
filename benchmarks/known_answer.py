"""Known-answer experiment: a dataset whose right scaling direction is known by construction.

The classes differ only in a period-2 texture (horizontal stripes, vertical stripes, checkerboard,
flat) under random brightness, contrast and noise. Images are 24 px and the target base is deployed
at 12 px (`--base-resolution 12`): the texture lies above what B0 sees, so the proxies see the images
with the same headroom (n_p = 24 px, the stored size) and the proxy base at 12 px, where every
period-2 texture averages to the same grey: no amount of depth or width can recover information the
input no longer holds. Only resolution can. So the right answer is the
resolution corner of the shares simplex, and a search that reports what it trained must find a
network whose realized resolution share is high, across seeds.

    python benchmarks/known_answer.py                 # 3 seeds of the default search, ~20 min on 2 cores
    python benchmarks/known_answer.py --seeds 0 --trials 8 --epochs 3 --out /tmp/known

Writes `OUT/texture24.npz` (the dataset), one run folder per seed, `OUT/summary.csv` and
`OUT/known_answer.png` (every trained network on the simplex, coloured by accuracy, the chosen ones
marked).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def texture_dataset(path: Path, *, n: int = 1600, size: int = 24, noise: float = 0.25, seed: int = 0) -> Path:
    """Write the texture-only dataset as npz (x: N×S×S uint8, y: N labels); returns `path`."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 4)
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    phase = rng.integers(0, 2, size=(n, 1, 1))
    patterns = np.stack(
        [
            (rows[None] + phase) % 2,  # horizontal stripes
            (cols[None] + phase) % 2,  # vertical stripes
            (rows[None] + cols[None] + phase) % 2,  # checkerboard
            np.full((n, size, size), 0.5),  # flat
        ]
    )
    fine = patterns[labels, np.arange(n)]
    base = rng.uniform(0.3, 0.5, size=(n, 1, 1))
    contrast = rng.uniform(0.2, 0.35, size=(n, 1, 1))
    gray = base + contrast * (fine - 0.5) + rng.normal(0.0, noise, size=(n, size, size))
    images = np.clip(np.rint(gray * 255), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=images, y=labels.astype(np.int64))
    return path


def stored_larger(source: Path, path: Path, factor: int = 2) -> Path:
    """The same images stored at `factor` times the size (each pixel a factor x factor block), as npz."""
    with np.load(source) as arrays:
        x, y = arrays["x"], arrays["y"]
    np.savez(path, x=x.repeat(factor, axis=1).repeat(factor, axis=2), y=y)
    return path


def run_search(dataset: Path, out: Path, seed: int, trials: int, epochs: int, *, base_resolution: int = 12) -> dict:
    """`scalesearch search` on the dataset with the shipped default space; returns best.json."""
    # B0 deployed at 12 px on the 24-px images: the texture lies above the target base's resolution, and
    # the proxies see the images at n_p = 12 x 24 / 12 = 24 px (the stored size).
    command = [sys.executable, "-m", "scalesearch", "search", "--dataset", f"npz:{dataset}", "--seed", str(seed),
               "--trials", str(trials), "--epochs", str(epochs), "--out", str(out), "--family-phis", "0-1",
               "--base-resolution", str(base_resolution)]  # fmt: skip
    if not (out / "best.json").is_file():
        subprocess.run(command + (["--resume"] if (out / "search.json").is_file() else []), check=True)
    return json.loads((out / "best.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "results" / "known-answer"))
    args = parser.parse_args()
    out = Path(args.out)
    dataset = texture_dataset(out / "texture24.npz")
    summary = []
    for seed in (int(s) for s in args.seeds.split(",")):
        best = run_search(dataset, out / f"seed{seed}", seed, args.trials, args.epochs)
        shares = best["shares"]
        confirmed = best["confirm"]
        summary.append({"seed": seed, "share_depth": shares["depth"], "share_width": shares["width"],
                        "share_resolution": shares["resolution"], "mean_accuracy": best["value"],
                        "std": best["std"], "seeds": best["seeds"], "distinguishable": confirmed["distinguishable"],
                        "tie_resolution_min": confirmed["tie_region"]["resolution"][0]})  # fmt: skip
        print(f"seed {seed}: shares d/w/r = {shares['depth']:.2f}/{shares['width']:.2f}/{shares['resolution']:.2f}, "
              f"accuracy {best['value']:.3f} ± {best['std'] or 0:.3f}; {best['verdict']}")  # fmt: skip
    with (out / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    plot(out, [int(s) for s in args.seeds.split(",")])


def plot(out: Path, seeds: list[int]) -> None:
    """Every trained network of every seed on the simplex, coloured by accuracy; chosen ones starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scalesearch.outputs.runs import read_trials

    figure, axes = plt.subplots(1, len(seeds), figsize=(4.2 * len(seeds), 4), squeeze=False)
    for axis, seed in zip(axes[0], seeds):
        rows = read_trials(out / f"seed{seed}" / "trials.csv").values()
        best = json.loads((out / f"seed{seed}" / "best.json").read_text())
        xs = [r["realized_share_width"] + 0.5 * r["realized_share_resolution"] for r in rows if r["final_val_accuracy"]]
        ys = [0.866 * r["realized_share_resolution"] for r in rows if r["final_val_accuracy"]]
        accuracy = [r["final_val_accuracy"] for r in rows if r["final_val_accuracy"]]
        axis.plot([0, 1, 0.5, 0], [0, 0, 0.866, 0], color="grey", lw=0.8)
        points = axis.scatter(xs, ys, c=accuracy, cmap="viridis", vmin=0.25, vmax=1.0, s=30)
        chosen = best["shares"]
        axis.scatter([chosen["width"] + 0.5 * chosen["resolution"]], [0.866 * chosen["resolution"]], marker="*",
                     s=220, facecolor="none", edgecolor="red", lw=1.5, label="chosen")  # fmt: skip
        for text, (x, y) in (("depth", (0, -0.06)), ("width", (1, -0.06)), ("resolution", (0.5, 0.9))):
            axis.annotate(text, (x, y), ha="center")
        axis.set_title(f"seed {seed}: resolution share {chosen['resolution']:.2f}")
        axis.set_axis_off()
    figure.colorbar(points, ax=axes[0].tolist(), label="final val accuracy", shrink=0.8)
    figure.suptitle("Known answer: classes differ only in a 2-px texture, so only resolution helps")
    figure.savefig(out / "known_answer.png", dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main()
