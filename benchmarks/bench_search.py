"""Search benchmarks, each measured side by side in one run (prints its figures).

(a) Orchestration overhead: the same proposals as a Ray Tune + Optuna search (concurrency 1) and as a
    plain Python loop (the planner's nearest realizable network + train_model), on the tiny test
    space, each a whole command in a fresh process; split into a fixed part per command and a
    marginal part per trial; and a search in a process that already runs Ray.
(b) 2 concurrent trials (1 thread each) against sequential trials (1 and 2 threads) on 2 cores.
(c) Search cost: tpe + ASHA against the grid over the whole realizable set (every network on the
    budget band once) on digits with the shipped EfficientNet proxy, same seeds: training epochs spent
    and the best accuracy found, against the grid's seed-to-seed spread.

    .venv/bin/python benchmarks/bench_search.py [--only a,b,c] [--epochs 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from scalesearch.config.recipe import Recipe
from scalesearch.config.settings import SearchSettings
from scalesearch.config.spaces import load_space
from scalesearch.core.scaling import Shares
from scalesearch.data.datasets import load_dataset
from scalesearch.planning.planner import realizable_set
from scalesearch.search.driver import run_search
from scalesearch.training.trainer import train_model

TINY = str(Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny_space.yaml")


def rows(run_dir: Path) -> list[dict]:
    with (run_dir / "trials.csv").open() as handle:
        return list(csv.DictReader(handle))


def timed_search(settings: SearchSettings) -> tuple[float, Path]:
    start = time.perf_counter()
    run_search(settings)
    return time.perf_counter() - start, Path(settings.out)


def tiny_settings(out: Path, **changes: object) -> SearchSettings:
    space = load_space(TINY)
    base = SearchSettings(
        space_path=space.path,
        dataset="digits",
        sampler="grid",
        trials=6,
        epochs=1,
        scheduler="none",
        concurrency=1,
        cpus_per_trial=1,
        out=str(out),
        recipe=dict(space.recipe),
        confirm_top=0,  # the search's trials only: the loop below has no confirm stage
        family_phis="0",
        quiet=True,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def plain_loop(run_dir: Path) -> float:
    """Seconds of the plain loop over a search's proposals: nearest realizable network + train_model."""
    trials = rows(run_dir)
    space = load_space(TINY)
    dataset = load_dataset("digits")
    recipe = Recipe.from_mapping({**space.recipe, "epochs": 1})
    start = time.perf_counter()
    found = realizable_set(space, num_classes=10, in_channels=1)  # cached on disk by the search
    for row in trials:
        shares = Shares(*(float(row[f"requested_share_{k}"]) for k in ("depth", "width", "resolution")))
        network = found.nearest(shares)
        train_model(
            lambda n=network: space.proxy_family.build(n.spec),
            dataset,
            recipe,
            resolution=network.spec.resolution,
            seed=int(row["seed"]),
            threads=1,
        )
    return time.perf_counter() - start


def timed_process(command: list[str]) -> float:
    """Wall seconds of a command in a fresh process, from its start to its exit."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def search_command(out: Path, trials: int) -> list[str]:
    return [sys.executable, "-m", "scalesearch.cli", "search", "--space", TINY, "--out", str(out),
            "--dataset", "digits", "--sampler", "grid", "--trials", str(trials), "--epochs", "1",
            "--scheduler", "none", "--concurrency", "1", "--cpus-per-trial", "1", "--confirm-top", "0",
            "--family-phis", "0", "--quiet"]  # fmt: skip


def bench_overhead(tmp: Path, rounds: int) -> None:
    """Whole commands, each a fresh process: `scalesearch search` against a plain script that trains
    the same proposals (python start, imports and data load included in both), at 6 and 12 trials,
    alternating over `rounds` rounds (the best of each is kept: noise only adds time). The
    overhead's fixed part (per command) and marginal part (per trial) are the intercept and slope.
    Then the same 12 trials as a search in a process that already runs Ray (a notebook: no Ray start
    or stop) against the loop in that process."""
    import ray

    best: dict[tuple[str, int], float] = {}
    for round_number in range(rounds):
        for n in (6, 12):
            out = tmp / f"a-{n}-{round_number}"
            figures = {
                "search": timed_process(search_command(out, n)),
                "loop": timed_process([sys.executable, __file__, "--plain-loop", str(out)]),
            }
            for kind, seconds in figures.items():
                best[kind, n] = min(best.get((kind, n), float("inf")), seconds)
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="ERROR", log_to_driver=False)  # fmt: skip
    try:
        timed_search(tiny_settings(tmp / "a-warm-up", trials=2))  # the session's start-up, once
        running, run_dir = timed_search(tiny_settings(tmp / "a-running", trials=12))
    finally:
        ray.shutdown()
    loop_here = plain_loop(run_dir)
    print(f"(a) tiny trials, 1 epoch, 1 thread, concurrency 1; whole commands, best of {rounds} rounds")
    overhead = {}
    for n in (6, 12):
        overhead[n] = best["search", n] - best["loop", n]
        print(f"    {n:2d} trials: scalesearch search {best['search', n]:6.1f} s, plain loop {best['loop', n]:5.1f} s, "
              f"overhead per trial {overhead[n] / n:5.2f} s")  # fmt: skip
    marginal = (overhead[12] - overhead[6]) / 6
    print(f"    overhead, marginal per trial (slope 6 -> 12 trials): {marginal:5.2f} s  (target <= 0.5)")
    print(f"    overhead, fixed per command (intercept):              {overhead[6] - 6 * marginal:5.1f} s")
    print(f"    12 trials in a process already running Ray: search {running:5.1f} s, loop {loop_here:5.1f} s, "
          f"overhead per trial {(running - loop_here) / 12:5.2f} s")  # fmt: skip


def bench_parallel(tmp: Path) -> None:
    """The trial phase (manifest's trials_wall_seconds) of 6 EfficientNet-proxy trials, 2 epochs each."""
    space = load_space("efficientnet_b0")
    figures = {}
    for label, concurrency, cpus in (
        ("sequential, 1 thread", 1, 1),
        ("sequential, 2 threads", 1, 2),
        ("2 concurrent x 1 thread", 2, 1),
    ):
        settings = SearchSettings(
            space_path=space.path, dataset="digits", sampler="grid", trials=6, epochs=2, scheduler="none",
            concurrency=concurrency, cpus_per_trial=cpus, out=str(tmp / f"b-{concurrency}-{cpus}"),
            recipe=dict(space.recipe), confirm_top=0, family_phis="0", quiet=True,
        )  # fmt: skip
        command_seconds, run_dir = timed_search(settings)
        trial_phase = json.loads((run_dir / "manifest.json").read_text())["trials_wall_seconds"]
        figures[label] = trial_phase
        print(f"(b) {label:24s}: trial phase {trial_phase:6.1f} s, whole command {command_seconds:6.1f} s (6 trials)")
    best_sequential = min(figures["sequential, 1 thread"], figures["sequential, 2 threads"])
    speedup = best_sequential / figures["2 concurrent x 1 thread"]
    print(f"(b) trial-phase speed-up of 2 concurrent over the faster sequential: {speedup:.2f}x (target >= 1.7)")


def bench_search_cost(tmp: Path, epochs: int) -> None:
    space = load_space("efficientnet_b0")
    common = {
        "space_path": space.path,
        "dataset": "digits",
        "epochs": epochs,
        "concurrency": 2,
        "cpus_per_trial": 1,
        "recipe": dict(space.recipe),
        "confirm_top": 0,  # the searches' own trials: what each strategy spends to find its best
        "family_phis": "0",
        "quiet": True,
    }
    grids = []
    for seed in (0, 1):
        settings = SearchSettings(
            sampler="grid", trials=10_000, scheduler="none", seed=seed, out=str(tmp / f"c-grid-{seed}"), **common
        )
        seconds, run_dir = timed_search(settings)
        grids.append((seconds, rows(run_dir), json.loads((run_dir / "best.json").read_text())))
    trained = [r for r in grids[0][1] if r["final_val_accuracy"]]
    grid_epochs = sum(int(r["epochs_run"]) for r in trained)
    # The grid trains every realizable network once: a network is a point of the grid.
    by_point = [{r["network"]: float(r["final_val_accuracy"]) for r in g[1] if r["final_val_accuracy"]} for g in grids]
    shared = set(by_point[0]) & set(by_point[1])
    spread = sum(abs(by_point[0][k] - by_point[1][k]) for k in shared) / max(1, len(shared))
    tpe_settings = SearchSettings(
        sampler="tpe", trials=max(6, len(trained) // 3), scheduler="asha", seed=0, out=str(tmp / "c-tpe"), **common
    )
    tpe_seconds, tpe_dir = timed_search(tpe_settings)
    tpe_rows = rows(tpe_dir)
    tpe_epochs = sum(int(r["epochs_run"]) for r in tpe_rows)
    tpe_best = json.loads((tpe_dir / "best.json").read_text())
    print(f"(c) digits, EfficientNet proxy, {epochs} epochs per full trial")
    for seed, (seconds, grid_rows, best) in enumerate(grids):
        print(
            f"    grid seed {seed}: {len(grid_rows)} points, {sum(int(r['epochs_run']) for r in grid_rows)} epochs, "
            f"best {best['value']:.4f} at ({best['alpha']}, {best['beta']}, {best['gamma']}), {seconds:.0f} s"
        )
    print(f"    grid seed-to-seed spread (mean |acc seed0 - acc seed1| per point): {spread:.4f}")
    print(
        f"    tpe + ASHA: {len(tpe_rows)} trials, {tpe_epochs} epochs, best {tpe_best['value']:.4f} at "
        f"({tpe_best['alpha']:.3f}, {tpe_best['beta']:.3f}, {tpe_best['gamma']:.3f}), {tpe_seconds:.0f} s"
    )
    gap = grids[0][2]["value"] - tpe_best["value"]
    print(
        f"    epochs tpe/grid: {tpe_epochs / grid_epochs:.2f}; best gap grid - tpe: {gap:+.4f} "
        f"({'within' if gap <= spread else 'outside'} the seed spread)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="a,b,c")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per full trial in (c)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds in (a)")
    parser.add_argument("--plain-loop", metavar="RUN", help=argparse.SUPPRESS)  # (a)'s loop process
    args = parser.parse_args()
    if args.plain_loop:
        plain_loop(Path(args.plain_loop))
        return
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        chosen = set(args.only.split(","))
        if "a" in chosen:
            bench_overhead(Path(tmp), args.rounds)
        if "b" in chosen:
            bench_parallel(Path(tmp))
        if "c" in chosen:
            bench_search_cost(Path(tmp), args.epochs)


if __name__ == "__main__":
    main()
