"""How often is the search right? The exhaustive ground truth of the default search, and the hit rate.

1. truth: every network of the default search's realizable set (its space, dataset, φ, constraint and
   data view) trained with 3 seeds, the search's own recipe and epochs, no early stop. Rows are saved
   as each job finishes (`OUT/truth.csv`, atomically): run it again after an interruption and it
   trains only what is missing.
2. From it: the true best network (best mean over seeds) and its tie region: every network whose mean
   is not below the best's beyond the seed spread (the confirm stage's own test, `search.confirm.decide`,
   with the seed spread pooled over all networks).
3. searches: the default search (`scalesearch search`, the space's defaults) with seeds 0..4, each in
   `OUT/search-seedK` (resumable: `--resume`); `--runs` names finished runs of that same search made
   elsewhere (the curated results/default and results/default-seed1), which count for their seed.
4. report: per search its choice, whether it lies in the true tie region, and what it cost as a fraction
   of the exhaustive grid (epochs trained, search and confirm stages together); `OUT/hit_rate.csv`,
   `OUT/truth_networks.csv` (mean ± std per network) and `OUT/ground_truth.png` (the true response
   surface on the simplex with the searches' choices).

    # the committed one (seeds 0 and 1 are the curated default runs): all stages, ~1 h on an idle 2-core VM
    python benchmarks/ground_truth.py --out results/ground-truth --runs results/default results/default-seed1
    python benchmarks/ground_truth.py --out results/ground-truth/official --recipe init=official  # the old init
    python benchmarks/ground_truth.py --stage report --runs results/default results/default-seed1

`--space`, `--dataset` and `--base-resolution` make it the ground truth of the default search on other
data, passed to the truth and the searches as `scalesearch search` takes them; the interior known
answer's (results/known-answer/interior/truth, with that set's 4 searches):

    python benchmarks/ground_truth.py --out results/known-answer/interior/truth \
        --space benchmarks/spaces/plain_cnn.yaml --dataset npz:DIR/interior_stripes_spectral.npz \
        --base-resolution 24 --search-seeds 0,1,2,3 \
        --runs results/known-answer/interior/seed0 results/known-answer/interior/seed1 \
               results/known-answer/interior/seed2 results/known-answer/interior/seed3
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from scalesearch.config.recipe import recipe_with_overrides
from scalesearch.config.settings import SearchSettings, parse_base_resolution
from scalesearch.config.spaces import DEFAULT_SPACE, load_space
from scalesearch.data.datasets import load_dataset
from scalesearch.execution.cluster import ray_session
from scalesearch.execution.runner import Progress, jobs_for, run_jobs
from scalesearch.outputs.runs import read_trials, write_text
from scalesearch.outputs.views import to_simplex
from scalesearch.planning.data_view import data_view
from scalesearch.search.confirm import decide
from scalesearch.search.driver import search_set

ROOT = Path(__file__).resolve().parent.parent
TRUTH_COLUMNS = ["network", "seed", "share_depth", "share_width", "share_resolution", "resolution", "flops",
                 "flops_ratio", "final_val_accuracy", "val_accuracies", "seconds", "status", "error"]  # fmt: skip


def default_settings(out: Path, concurrency: int, recipe: list[str], target: dict[str, str]) -> SearchSettings:
    """The settings `scalesearch search` runs with no flags but `target` (`--space`, `--dataset`,
    `--base-resolution` -> value, as given to this benchmark): the space's search: section, with
    `--recipe KEY=VALUE` changes (`recipe`) as the search would take them."""
    space = load_space(target.get("--space", DEFAULT_SPACE))
    known = {f.name for f in fields(SearchSettings)}
    # base_resolution stays the space's to apply (with its own dataset), as `scalesearch search` leaves it.
    values = {k: v for k, v in space.search.items() if k in known and k != "base_resolution"}
    values.update(concurrency=concurrency, quiet=True, out=str(out))
    if "--dataset" in target:
        values["dataset"] = target["--dataset"]
    if "--base-resolution" in target:
        values["base_resolution"] = parse_base_resolution(target["--base-resolution"])
    return SearchSettings(space_path=space.path, recipe=recipe_with_overrides(space.recipe, recipe), **values)


def read_truth(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_truth(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TRUTH_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: (str(r["network"]), int(r["seed"]))))
    write_text(path, buffer.getvalue())


def train_truth(out: Path, seeds: list[int], concurrency: int, recipe: list[str], target: dict[str, str]) -> None:
    """Every network of the realizable set × seeds, skipping the (network, seed) pairs already saved."""
    settings = default_settings(out / "truth-scratch", concurrency, recipe, target)
    space = load_space(settings.space_path)
    dataset = load_dataset(settings.dataset)
    view = data_view(space, dataset.native_size, settings.base_resolution, dataset=settings.dataset)
    found = search_set(settings, space, dataset)
    path = out / "truth.csv"
    rows = [r for r in read_truth(path) if r["status"] == "completed"]
    done = {(r["network"], int(r["seed"])) for r in rows}
    todo = [(n, seed) for n in found.networks for seed in seeds if (n.key, seed) not in done]
    print(f"{view.describe()}\n{len(found.networks)} networks x {len(seeds)} seeds; {len(todo)} jobs to train")
    if not todo:
        return
    jobs = jobs_for(settings, [(n.spec, seed, f"{n.key} seed {seed}") for n, seed in todo], view=view.resize)
    progress = Progress("truth", len(jobs), quiet=False)
    progress.start = time.monotonic()

    def save(index: int, outcome: Any) -> None:
        network, seed = todo[index]
        shares = network.shares
        completed = outcome.status == "completed" and bool(outcome.accuracies)
        rows.append({
            "network": network.key, "seed": seed, "share_depth": shares.depth, "share_width": shares.width,
            "share_resolution": shares.resolution, "resolution": network.spec.resolution, "flops": network.flops,
            "flops_ratio": network.flops_ratio,
            "final_val_accuracy": outcome.accuracies[-1] if completed else "",
            "val_accuracies": ";".join(f"{a:.6f}" for a in outcome.accuracies), "seconds": round(outcome.seconds, 2),
            "status": outcome.status, "error": outcome.error,
        })  # fmt: skip
        write_truth(path, [r for r in rows if r["status"] == "completed" or r is rows[-1]])

    with ray_session(settings, space=space):
        run_jobs(jobs, concurrency=concurrency, cpus=1, gpus=0, progress=progress, on_done=save)
    progress.close()


def search_folders(out: Path, seeds: list[int], runs: list[Path]) -> dict[int, Path]:
    """Where each seed's default search lives: a given finished run of that seed, else OUT/search-seedK."""
    given = {}
    for run in runs:
        settings = json.loads((run / "search.json").read_text())["settings"]
        given[int(settings["seed"])] = run
    return {seed: given.get(seed, out / f"search-seed{seed}") for seed in seeds}


def run_searches(folders: dict[int, Path], recipe: list[str], target: dict[str, str]) -> None:
    """The default search once per seed (resumed where a folder holds an unfinished one)."""
    for seed, folder in folders.items():
        if (folder / "best.json").is_file():
            continue
        command = [sys.executable, "-m", "scalesearch", "search", "--seed", str(seed), "--out", str(folder),
                   "--family-phis", "0-1", "--quiet", *(f"--recipe={r}" for r in recipe),
                   *(f"{flag}={value}" for flag, value in target.items())]  # fmt: skip
        if (folder / "search.json").is_file():
            command.append("--resume")
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, check=True, cwd=ROOT)


def truth_decision(rows: list[dict[str, Any]]) -> Any:
    """The true best network and its tie region: the confirm stage's test over every network."""
    as_trials = {
        i: {"trial": i, "network": r["network"], "seed": int(r["seed"]), "status": r["status"],
            "final_val_accuracy": float(r["final_val_accuracy"]), "flops": int(r["flops"]),
            "realized_share_depth": float(r["share_depth"]), "realized_share_width": float(r["share_width"]),
            "realized_share_resolution": float(r["share_resolution"])}
        for i, r in enumerate(rows) if r["status"] == "completed"
    }  # fmt: skip
    return decide(as_trials)


def report(out: Path, folders: dict[int, Path], truth_seeds: int) -> None:
    rows = read_truth(out / "truth.csv")
    decision = truth_decision(rows)
    if decision is None:
        raise SystemExit("no ground truth yet: run --stage truth")
    tied = set(decision.tied)
    networks = []
    for score in decision.confirmed:
        depth, width, resolution = (round(share, 3) for share in score.shares)
        networks.append({"network": score.network, "n": score.n, "mean": round(score.mean, 4),
                         "std": "" if score.std is None else round(score.std, 4), "share_depth": depth,
                         "share_width": width, "share_resolution": resolution,
                         "in_tie_region": score.network in tied})  # fmt: skip
    true_means = {score.network: round(score.mean, 4) for score in decision.confirmed}
    _write_csv(out / "truth_networks.csv", networks)
    grid_epochs = sum(len(str(r["val_accuracies"]).split(";")) for r in rows if r["status"] == "completed")
    grid_seconds = sum(float(r["seconds"]) for r in rows if r["status"] == "completed")
    hits = []
    for seed, folder in folders.items():
        if not (folder / "best.json").is_file():
            continue
        best = json.loads((folder / "best.json").read_text())
        trials = read_trials(folder / "trials.csv", report=False)
        trained = [t for t in trials.values() if t.get("status") in ("completed", "stopped")]
        trained_epochs = sum(int(t.get("epochs_run") or 0) for t in trained)
        shares = best["shares"]
        hits.append({
            "seed": seed, "run": str(folder), "chosen": best["network"], "mean": round(best["value"], 4),
            "shares": f"{shares['depth']:.2f}/{shares['width']:.2f}/{shares['resolution']:.2f}",
            "in_true_tie_region": best["network"] in tied,
            "true_mean_of_choice": true_means.get(best["network"], ""), "trainings": len(trained),
            "epochs": trained_epochs, "epoch_fraction": round(trained_epochs / grid_epochs, 3),
            "seconds": round(sum(float(t.get("seconds") or 0) for t in trained), 1),
            "seconds_fraction": round(sum(float(t.get("seconds") or 0) for t in trained) / grid_seconds, 3),
        })  # fmt: skip
    _write_csv(out / "hit_rate.csv", hits)
    chosen = decision.chosen
    summary = {
        "networks": len(decision.confirmed), "seeds_per_network": truth_seeds,
        "true_best": chosen.network, "true_best_mean": chosen.mean, "true_best_std": chosen.std,
        "true_best_shares": list(chosen.shares), "tie_region": sorted(tied), "pooled_std": decision.pooled_std,
        "grid_epochs": grid_epochs, "grid_seconds": round(grid_seconds, 1),
        "searches": len(hits), "hits": sum(1 for h in hits if h["in_true_tie_region"]),
    }  # fmt: skip
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    plot(out, decision, hits)
    print(json.dumps(summary, indent=2))
    for h in hits:
        print(h)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, buffer.getvalue())


def plot(out: Path, decision: Any, hits: list[dict[str, Any]]) -> None:
    """The true response surface on the shares simplex: each network by its mean accuracy, the tie
    region ringed, each search's choice marked with its seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = list(decision.confirmed)
    xy = [to_simplex(*s.shares) for s in scores]
    figure, axis = plt.subplots(figsize=(6.4, 5.6))
    corners = [(0, 0), (1, 0), (0.5, math.sqrt(3) / 2), (0, 0)]
    axis.plot(*zip(*corners), color="0.6", linewidth=1)
    for (x, y), label in zip(corners[:3], ("depth", "width", "resolution")):
        axis.annotate(label, (x, y), textcoords="offset points", xytext=(0, -14 if y == 0 else 6), ha="center")
    drawn = axis.scatter([p[0] for p in xy], [p[1] for p in xy], c=[s.mean for s in scores], cmap="viridis",
                         s=40, edgecolors="none", zorder=3)  # fmt: skip
    seeds = sorted({s.n for s in scores})
    counted = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    figure.colorbar(drawn, ax=axis, label=f"mean final val accuracy ({counted} seeds per network)")
    tied = [xy[i] for i, s in enumerate(scores) if s.network in decision.tied]
    axis.scatter([p[0] for p in tied], [p[1] for p in tied], s=130, facecolors="none", edgecolors="crimson",
                 linewidths=1.5, zorder=4, label="true tie region")  # fmt: skip
    where = {s.network: xy[i] for i, s in enumerate(scores)}
    chosen: dict[str, list[int]] = {}
    for h in hits:
        chosen.setdefault(h["chosen"], []).append(h["seed"])
    for network, seeds_of in chosen.items():  # one label per chosen network, its seeds listed
        if network in where:
            x, y = where[network]
            axis.scatter([x], [y], marker="x", s=90, color="black", zorder=5)
            label = ("seed " if len(seeds_of) == 1 else "seeds ") + ", ".join(map(str, sorted(seeds_of)))
            axis.annotate(label, (x, y), textcoords="offset points", xytext=(10, -3), fontsize=7)
    axis.scatter([], [], marker="x", color="black", label="a search's choice")
    axis.set_aspect("equal")
    axis.axis("off")
    axis.legend(loc="upper right", bbox_to_anchor=(1.0, 1.04), fontsize=8)
    axis.set_title(f"Ground truth: all {len(scores)} realizable networks at phi 2;\n"
                   f"{sum(1 for h in hits if h['in_true_tie_region'])} of {len(hits)} searches chose in the tie region",
                   fontsize=9, pad=18)  # fmt: skip
    figure.tight_layout()
    figure.savefig(out / "ground_truth.png", dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/ground-truth")
    parser.add_argument("--stage", choices=["truth", "searches", "report", "all"], default="all")
    parser.add_argument("--truth-seeds", default="0,1,2")
    parser.add_argument("--search-seeds", default="0,1,2,3,4")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--runs", nargs="*", default=[], help="finished runs of the default search to count")
    parser.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe change for the truth and the searches alike, e.g. init=official")  # fmt: skip
    parser.add_argument("--space", help="another space than the default's (its search: section applies)")
    parser.add_argument("--dataset", help="another dataset than the space's")
    parser.add_argument("--base-resolution", help="where B0 is deployed, as `scalesearch search` takes it")
    args = parser.parse_args()
    # The search's flags that pick what is searched, passed on as given.
    given = {"--space": args.space, "--dataset": args.dataset, "--base-resolution": args.base_resolution}
    target = {flag: value for flag, value in given.items() if value is not None}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    truth_seeds = [int(s) for s in args.truth_seeds.split(",")]
    search_seeds = [int(s) for s in args.search_seeds.split(",")]
    if args.stage in ("truth", "all"):
        train_truth(out, truth_seeds, args.concurrency, args.recipe, target)
    folders = search_folders(out, search_seeds, [Path(run) for run in args.runs])
    if args.stage in ("searches", "all"):
        run_searches(folders, args.recipe, target)
    if args.stage in ("report", "all"):
        report(out, folders, len(truth_seeds))


if __name__ == "__main__":
    main()
