"""GPU trial packing: images/s per trial and in aggregate at 1, 2, 4 and 8 concurrent trials per GPU.

For each model (the default proxy, efficientnet_b0 at φ = 1 with α, β, γ = 1.2, 1.1, 1.15 at its
own resolution; and a full B0 at 64 px) and each number of concurrent trials, starts that many
processes (multiprocessing, spawn: each its own CUDA context, as Ray workers have), each training
the model with `train_model` on the GPU for a few epochs, started together. Reported per set-up:

- images/s per trial (median of the epochs after the first) and their sum over trials;
- time to first epoch (from process start: imports, CUDA context, data to the device, layout
  probe, cuDNN autotuning and the first epoch) and time per trial (`train_model` wall time);
- GPU utilisation (mean and peak of nvidia-smi samples every 200 ms while the trials run) and
  the largest per-trial peak of allocated GPU memory.

Run: `.venv/bin/python benchmarks/bench_gpu.py` (about 10 minutes on one GPU; `--help` for options,
`--capture` to replay steps as CUDA graphs, `--batch-size` for GPU-sized batches). It needs CUDA:
without a device it says so in one line and exits with status 1.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import statistics
import subprocess
import threading
import time
from typing import Any

import torch


def build(kind: str, num_classes: int, in_channels: int) -> tuple[Any, int]:
    """(model factory, resolution) for "proxy" (the search's default proxy) or "b0-64" (full B0, 64 px)."""
    from scalesearch.config.spaces import load_space
    from scalesearch.core.scaling import Coefficients
    from scalesearch.models.families import ModelSpec

    space = load_space("efficientnet_b0")
    if kind == "proxy":
        spec = space.scaled_proxy(Coefficients(1.2, 1.1, 1.15), 1.0, num_classes=num_classes, in_channels=in_channels)
        return (lambda: space.proxy_family.build(spec)), spec.resolution
    spec = ModelSpec(width_mult=1.0, depth_mult=1.0, resolution=64, num_classes=num_classes, in_channels=in_channels)
    return (lambda: space.family.build(spec)), spec.resolution


def trial(args: argparse.Namespace, kind: str, born: float, barrier: Any, queue: Any) -> None:
    """One trial in its own process; puts its figures on the queue."""
    from scalesearch.config.recipe import Recipe
    from scalesearch.data.datasets import load_dataset
    from scalesearch.training.trainer import train_model

    dataset = load_dataset(args.dataset)
    factory, resolution = build(kind, dataset.num_classes, dataset.in_channels)
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size) if args.batch_size else Recipe(epochs=args.epochs)
    torch.cuda.init()
    barrier.wait()  # start training together, so the trials really share the GPU
    first: list[float] = []
    result = train_model(
        factory,
        dataset,
        recipe,
        resolution=resolution,
        seed=0,
        device="cuda",
        on_epoch=lambda m: first.append(time.time()) if not first else None,
        capture=args.capture,
    )
    queue.put(
        {
            "images_per_second": statistics.median(m.images_per_second for m in result.epochs[1:]),
            "first_epoch_s": first[0] - born,
            "trial_s": result.seconds,
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9,
            "layout": result.epochs[-1].layout,
            "captured": result.captured,
        }
    )


def sample_utilisation(stop: threading.Event, samples: list[float]) -> None:
    """GPU utilisation (%) every 200 ms from nvidia-smi (or torch.cuda.utilization) until `stop`."""
    smi = shutil.which("nvidia-smi")
    while not stop.is_set():
        try:
            if smi:
                out = subprocess.run(
                    [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                samples.append(float(out.strip().splitlines()[0]))
            else:
                samples.append(float(torch.cuda.utilization(0)))
        except Exception:  # no nvidia-smi and no pynvml: utilisation is left out, not fatal
            return
        time.sleep(0.2)


def run(args: argparse.Namespace, kind: str, trials: int) -> dict[str, Any]:
    """`trials` concurrent trials of `kind`; their figures and the GPU utilisation samples."""
    context = mp.get_context("spawn")
    barrier = context.Barrier(trials)
    queue = context.Queue()
    born = time.time()
    workers = [context.Process(target=trial, args=(args, kind, born, barrier, queue)) for _ in range(trials)]
    for worker in workers:
        worker.start()
    stop, samples = threading.Event(), []
    sampler = threading.Thread(target=sample_utilisation, args=(stop, samples), daemon=True)
    sampler.start()
    results = [queue.get() for _ in workers]
    stop.set()
    for worker in workers:
        worker.join()
    sampler.join()
    return {"results": results, "utilisation": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic:n=10000,size=64,channels=3")
    parser.add_argument("--models", nargs="+", default=["proxy", "b0-64"], choices=["proxy", "b0-64"])
    parser.add_argument("--trials", type=int, nargs="+", default=[1, 2, 4, 8], help="concurrent trials per GPU")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial; the first is warm-up")
    parser.add_argument("--batch-size", type=int, default=0, help="batch size (0: the default recipe's)")
    parser.add_argument("--capture", action="store_true", help="train_model(capture=True): CUDA graphs")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(
            "bench_gpu.py: no CUDA device available (torch.cuda.is_available() is False); nothing to measure"
        )

    from scalesearch.data.datasets import load_dataset

    load_dataset(args.dataset)  # generate (and cache on disk) once, before the trials start
    print(
        f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, data {args.dataset}, "
        f"batch {args.batch_size or 'recipe default'}, {args.epochs} epochs per trial, capture {args.capture}"
    )
    for kind in args.models:
        for trials in args.trials:
            figures = run(args, kind, trials)
            results, util = figures["results"], figures["utilisation"]
            rates = [r["images_per_second"] for r in results]
            first = statistics.median(r["first_epoch_s"] for r in results)
            per_trial = statistics.median(r["trial_s"] for r in results)
            mean_util = statistics.fmean(util) if util else float("nan")
            peak_util = max(util, default=float("nan"))
            captured = " (captured)" if results[0]["captured"] else ""
            print(
                f"{kind:6s} x{trials}: {statistics.median(rates):7.0f} images/s per trial (median), "
                f"{sum(rates):8.0f} aggregate; first epoch after {first:5.1f} s; {per_trial:5.1f} s per trial; "
                f"GPU util mean {mean_util:3.0f}% peak {peak_util:3.0f}%; "
                f"peak memory {max(r['peak_gb'] for r in results):.2f} GB per trial; "
                f"layout {results[0]['layout']}{captured}",
                flush=True,
            )


if __name__ == "__main__":
    main()
