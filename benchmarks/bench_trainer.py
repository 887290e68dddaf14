"""Trainer throughput: `train_model` against a minimal hand-written PyTorch loop, memory layouts, and
CPU trial packing.

1. images/s of `scalesearch.training.trainer.train_model` (NCHW, forced) against the smallest honest training
   loop one could write by hand (same model, data, batch size, optimizer, loss, threads and layout),
   alternating the two so background load hits both alike. Target: ratio >= 0.95.
2. Memory layouts side by side: images/s of the trainer in NCHW (contiguous), channels-last and its
   own choice ("auto", probe included in the run but not in images/s; its cost is printed), at the
   proxy's resolution and at 32 px. Target: auto >= 1.3× NCHW on the default proxy at 1 thread.
3. Aggregate images/s of 2 concurrent trials × 1 thread against 1 trial × 2 threads, each trial in
   its own process (multiprocessing, spawn), as a search packs trials on a CPU machine.

Run: `.venv/bin/python benchmarks/bench_trainer.py` (about 8 minutes on 2 cores; `--only 2` for the
layouts alone, about 3); `--help` for options. Steady-state figures: the first epoch of every run
(allocator and kernel warm-up) is left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F

from scalesearch.config.recipe import Recipe
from scalesearch.config.spaces import load_space
from scalesearch.core.scaling import Coefficients
from scalesearch.data.datasets import load_dataset
from scalesearch.data.prep import resized_images, split_dataset
from scalesearch.training.layout import clear_layout_cache
from scalesearch.training.trainer import EpochMetrics, train_model

PAPER = Coefficients(1.2, 1.1, 1.15)


def proxy_factory(
    space_name: str, num_classes: int, in_channels: int, resolution: int | None = None
) -> tuple[Any, int]:
    """(model factory, resolution) of the space's proxy at φ = 1 with the paper's coefficients, as a
    search builds it; `resolution` replaces the proxy's own (same network, other input size)."""
    space = load_space(space_name)
    spec = space.scaled_proxy(PAPER, 1.0, num_classes=num_classes, in_channels=in_channels)
    if resolution is not None:
        spec = dataclasses.replace(spec, resolution=resolution)
    return (lambda: space.proxy_family.build(spec)), spec.resolution


class HandLoop:
    """The smallest honest training loop one could write by hand, one epoch per call."""

    def __init__(self, args: argparse.Namespace, recipe: Recipe) -> None:
        dataset = load_dataset(args.dataset)
        factory, resolution = proxy_factory(args.space, dataset.num_classes, dataset.in_channels)
        split = split_dataset(dataset, val_fraction=recipe.val_fraction, seed=recipe.split_seed)
        mean = torch.tensor(split.mean).view(1, -1, 1, 1)
        std = torch.tensor(split.std).view(1, -1, 1, 1)
        self.x = (resized_images(dataset, resolution)[split.train_indices].float() / 255 - mean) / std
        self.y = dataset.labels[split.train_indices]
        self.val_x = (resized_images(dataset, resolution)[split.val_indices].float() / 255 - mean) / std
        self.val_y = dataset.labels[split.val_indices]
        torch.manual_seed(0)
        self.model = factory()
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=recipe.lr,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
            nesterov=True,
        )
        self.batch = recipe.batch_size
        self.label_smoothing = recipe.label_smoothing

    def epoch(self) -> tuple[float, float]:
        """Train and evaluate one epoch: (training images/s by the wall clock, CPU seconds of it all)."""
        cpu_start = time.process_time()
        steps = len(self.y) // self.batch
        start = time.perf_counter()
        self.model.train()
        order = torch.randperm(len(self.y))
        for i in range(steps):
            index = order[i * self.batch : (i + 1) * self.batch]
            logits = self.model(self.x[index])
            loss = F.cross_entropy(logits, self.y[index], label_smoothing=self.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        rate = steps * self.batch / (time.perf_counter() - start)
        self.model.eval()
        with torch.inference_mode():
            correct = sum(
                int((self.model(x).argmax(1) == y).sum())
                for x, y in zip(self.val_x.split(1024), self.val_y.split(1024))
            )
        assert 0 <= correct <= len(self.val_y)
        return rate, time.process_time() - cpu_start


def interleaved_epochs(args: argparse.Namespace, recipe: Recipe) -> list[tuple[float, float, float, float]]:
    """Per epoch: (trainer images/s, hand images/s, trainer CPU s, hand CPU s), alternating epochs.

    The hand loop's epoch runs inside train_model's epoch callback (outside the trainer's clock), so
    both see the same background load, which on a shared 2-core machine swings by 2× within minutes.
    CPU seconds (train + evaluation, from time.process_time) are what each loop itself spent, which
    other processes on the machine disturb far less than wall time.
    """
    dataset = load_dataset(args.dataset)
    factory, resolution = proxy_factory(args.space, dataset.num_classes, dataset.in_channels)
    hand = HandLoop(args, recipe)
    rows: list[tuple[float, float, float, float]] = []
    mark = [0.0]

    def on_epoch(metrics: EpochMetrics) -> None:
        trainer_cpu = time.process_time() - mark[0]
        hand_rate, hand_cpu = hand.epoch()
        rows.append((metrics.images_per_second, hand_rate, trainer_cpu, hand_cpu))
        mark[0] = time.process_time()

    # Warm the caches the trainer would find warm in a worker (dataset, resized copy, split).
    split_dataset(dataset, val_fraction=recipe.val_fraction, seed=recipe.split_seed)
    mark[0] = time.process_time()
    # NCHW, as the hand loop: this part measures the trainer's own overhead, not the layout.
    train_model(
        factory,
        dataset,
        recipe,
        resolution=resolution,
        seed=0,
        threads=args.threads,
        on_epoch=on_epoch,
        layout="contiguous",
    )
    return rows


def layout_rounds(
    args: argparse.Namespace, recipe: Recipe, resolution: int | None
) -> tuple[int, dict[str, list[float]], list[Any]]:
    """(resolution, steady-state images/s per set-up and round, auto's layout choices), alternating.

    Each round trains one short run per set-up (NCHW, channels-last, auto) back to back, so drifting
    background load meets all three; auto starts each round with no remembered decision (fresh
    process memo and layout cache directory), so every auto run pays for its probe.
    """
    dataset = load_dataset(args.dataset)
    factory, resolution = proxy_factory(args.space, dataset.num_classes, dataset.in_channels, resolution)
    rates: dict[str, list[float]] = {"contiguous": [], "channels_last": [], "auto": []}
    choices = []
    scratch = os.environ["SCALESEARCH_CACHE"]
    for _ in range(args.rounds):
        for setup in rates:
            clear_layout_cache()
            # Where choose_layout stores its decisions: a new folder, so that auto measures again.
            os.environ["SCALESEARCH_CACHE"] = tempfile.mkdtemp(dir=scratch)
            result = train_model(
                factory, dataset, recipe, resolution=resolution, seed=0, threads=args.threads, layout=setup
            )
            rates[setup].append(statistics.median(m.images_per_second for m in result.epochs[1:]))
            if setup == "auto":
                choices.append(result.layout_choice)
    os.environ["SCALESEARCH_CACHE"] = scratch
    return resolution, rates, choices


def print_layouts(args: argparse.Namespace, recipe: Recipe) -> None:
    """Part 2: the three set-ups at the proxy's resolution and at 32 px."""
    print(f"\n2. memory layouts, {args.threads} thread(s), {args.rounds} alternating rounds of {recipe.epochs} epochs")
    for wanted in (None, 32):
        resolution, rates, choices = layout_rounds(args, recipe, wanted)
        nchw = statistics.median(rates["contiguous"])
        print(f"   {resolution} px:")
        for setup, values in rates.items():
            value = statistics.median(values)
            shown = ", ".join(f"{v:.0f}" for v in values)
            print(f"     {setup:14s} {value:7.0f} images/s  ({value / nchw:4.2f}x NCHW; rounds: {shown})")
        for choice in choices:
            measured = ", ".join(f"{k} {v:.0f}" for k, v in choice.images_per_second.items())
            print(f"     auto chose {choice.layout} in {choice.seconds:.1f} s (probe images/s: {measured})")
        sys.stdout.flush()


def _trial_worker(args: argparse.Namespace, recipe: Recipe, threads: int, barrier: Any, queue: Any) -> None:
    """One trial in its own process; puts its median steady-state images/s on the queue."""
    dataset = load_dataset(args.dataset)
    factory, resolution = proxy_factory(args.space, dataset.num_classes, dataset.in_channels)
    resized_images(dataset, resolution)  # resize before the clock starts, as a warm worker would
    barrier.wait()  # start together, so the trials really compete for the cores
    result = train_model(factory, dataset, recipe, resolution=resolution, seed=0, threads=threads)
    queue.put(statistics.median(m.images_per_second for m in result.epochs[1:]))


def aggregate_images_per_second(args: argparse.Namespace, recipe: Recipe, trials: int, threads: int) -> float:
    """Sum over `trials` concurrent processes of their steady-state images/s."""
    context = mp.get_context("spawn")
    barrier = context.Barrier(trials)
    queue = context.Queue()
    workers = [
        context.Process(target=_trial_worker, args=(args, recipe, threads, barrier, queue)) for _ in range(trials)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    return sum(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="efficientnet_b0")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per run; the first is warm-up")
    parser.add_argument("--threads", type=int, default=1, help="threads for part 1 (both loops); 1 is how trials run")
    parser.add_argument("--packing-epochs", type=int, default=3, help="epochs per trial in part 3")
    parser.add_argument("--layout-epochs", type=int, default=2, help="epochs per run in part 2; the first is warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds in part 2")
    parser.add_argument("--only", type=int, choices=(1, 2, 3), help="run one part only")
    args = parser.parse_args()
    # Layout decisions go to a fresh directory (inherited by the spawned trials of part 3), so the
    # benchmark measures them instead of reading a machine's earlier ones, and leaves no files behind.
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as scratch:
        os.environ["SCALESEARCH_CACHE"] = scratch
        run(args)


def run(args: argparse.Namespace) -> None:
    """The parts asked for, after a warm-up run."""
    # Augmentation off and no warm-up difference: both loops do exactly the same arithmetic.
    recipe = Recipe(epochs=args.epochs, warmup_epochs=0.0, augment=False)

    dataset = load_dataset(args.dataset)
    _, resolution = proxy_factory(args.space, dataset.num_classes, dataset.in_channels)
    print(
        f"proxy: {args.space} at phi=1 (alpha, beta, gamma = 1.2, 1.1, 1.15), {resolution} px; "
        f"data: {args.dataset}; batch {recipe.batch_size}; {args.epochs} epochs per run (first left out)"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} default threads, {mp.cpu_count()} CPUs, "
        f"load average at start {os.getloadavg()[0]:.2f}",
        flush=True,
    )

    # A first short run pays the process's one-off costs (torch._dynamo import, allocator growth).
    factory, resolution = proxy_factory(args.space, dataset.num_classes, dataset.in_channels)
    warmup = dataclasses.replace(recipe, epochs=1)
    train_model(factory, dataset, warmup, resolution=resolution, seed=0, threads=1, layout="contiguous")

    if args.only in (None, 1):
        print_overhead(args, recipe)
    if args.only in (None, 2):
        print_layouts(args, dataclasses.replace(recipe, epochs=args.layout_epochs))
    if args.only in (None, 3):
        print_packing(args, recipe)


def print_overhead(args: argparse.Namespace, recipe: Recipe) -> None:
    """Part 1: the trainer against the hand-written loop."""
    # The first epoch of each is warm-up (allocator, oneDNN primitive creation, model build).
    rows = interleaved_epochs(args, recipe)[1:]
    t = statistics.median(r[0] for r in rows)
    h = statistics.median(r[1] for r in rows)
    t_cpu, h_cpu = sum(r[2] for r in rows), sum(r[3] for r in rows)
    print(
        f"\n1. trainer (NCHW) vs hand-written NCHW loop, {args.threads} thread(s), epochs alternating, first left out"
    )
    print(f"   train_model:   {t:8.0f} images/s (median; epochs: {', '.join(f'{r[0]:.0f}' for r in rows)})")
    print(f"   hand-written:  {h:8.0f} images/s (median; epochs: {', '.join(f'{r[1]:.0f}' for r in rows)})")
    print(f"   ratio (wall clock, images/s):             {t / h:6.3f}  (target >= 0.95)")
    print(f"   ratio (CPU time per epoch, hand/trainer): {h_cpu / t_cpu:6.3f}  ({h_cpu:.1f} s / {t_cpu:.1f} s)")
    sys.stdout.flush()


def print_packing(args: argparse.Namespace, recipe: Recipe) -> None:
    """Part 3: 2 trials x 1 thread against 1 trial x 2 threads."""
    # Alternate the two set-ups twice for the same reason: the background load drifts.
    packing = dataclasses.replace(recipe, epochs=args.packing_epochs)
    packed, single = [], []
    for _ in range(2):
        single.append(aggregate_images_per_second(args, packing, trials=1, threads=2))
        packed.append(aggregate_images_per_second(args, packing, trials=2, threads=1))
    p, s = statistics.median(packed), statistics.median(single)
    print("\n3. CPU trial packing (each trial a spawned process; 2 alternating rounds)")
    print(f"   2 trials x 1 thread:  {p:8.0f} images/s aggregate (rounds: {', '.join(f'{v:.0f}' for v in packed)})")
    print(f"   1 trial  x 2 threads: {s:8.0f} images/s           (rounds: {', '.join(f'{v:.0f}' for v in single)})")
    print(f"   ratio:                {p / s:8.3f}")


if __name__ == "__main__":
    main()
