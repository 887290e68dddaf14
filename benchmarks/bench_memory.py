"""Peak memory of training processes on an image folder: per worker and per node, 1 and 2 at once.

Writes a folder of generated PNGs (default 5,000 RGB images of 96×96 px, 10 classes: 138 MB as
uint8), decodes it once per code version (the decode cache is warm, as it is for every trial of a
search but the first), then starts 1 and then 2 concurrent worker processes, each of which loads the
folder and trains the default proxy (efficientnet_b0 at φ = 1, α, β, γ = 1.2, 1.1, 1.15) for one
epoch on one thread, as a search's trial does. Reported per set-up:

- per worker: peak RSS (getrusage ru_maxrss, exact) and peak PSS (sampled);
- per node: the peak over time of the workers' summed PSS (/proc/PID/smaps_rollup, sampled every
  50 ms), where a page shared by two processes counts half in each, so shared copies count once;
- the baseline: RSS of a process that only imports torch and scalesearch.

`--baseline-ref REF` measures the code of a git commit too (extracted with `git archive` into a
temp folder and put first on PYTHONPATH), e.g. the commit before the memory work, side by side.

Run: `.venv/bin/python benchmarks/bench_memory.py --baseline-ref 69d72e4` (about 5 minutes on 2
cores, of which about 1 writing the PNGs); Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

WORKER = """
import json, resource, sys, time
mode, spec, resolution = sys.argv[1], sys.argv[2], int(sys.argv[3])
import dataclasses, torch
from scalesearch.data.datasets import load_dataset
from scalesearch.config.recipe import Recipe
from scalesearch.core.scaling import Coefficients
from scalesearch.config.spaces import load_space
from scalesearch.training.trainer import train_model
start = time.perf_counter()
if mode == "train":
    dataset = load_dataset(spec)
    space = load_space("efficientnet_b0")
    model = space.scaled_proxy(Coefficients(1.2, 1.1, 1.15), 1.0, num_classes=dataset.num_classes,
                               in_channels=dataset.in_channels)
    if resolution:
        model = dataclasses.replace(model, resolution=resolution)
    result = train_model(lambda: space.proxy_family.build(model), dataset, Recipe(epochs=1),
                         resolution=model.resolution, seed=0, threads=1)
    extra = {"images_per_second": result.epochs[-1].images_per_second, "resolution": model.resolution}
elif mode == "load":
    load_dataset(spec)
    extra = {}
else:
    time.sleep(0.5)
    extra = {}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
import scalesearch
print(json.dumps({"peak_rss": peak, "seconds": time.perf_counter() - start, "code": scalesearch.__file__, **extra}))
"""


def write_folder(root: Path, images: int, size: int, classes: int) -> None:
    """`images` PNGs of `size` px in `classes` class folders, from the synthetic generator (RGB)."""
    from PIL import Image

    sys.path.insert(0, str(REPO))
    from scalesearch.data.synthetic import synthetic_chunks

    done = 0
    chunks = synthetic_chunks(n=images, classes=classes, size=size, channels=3, seed=0, noise=0.1)
    for chunk in chunks:
        for image in chunk:
            folder = root / f"class{done % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{done:05d}.png", compress_level=1)
            done += 1


def smaps(pid: int) -> dict[str, int]:
    """Rss and Pss of a process in bytes (zeros once it is gone)."""
    values = {"Rss": 0, "Pss": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return values


def run_workers(root: Path, cache: Path, spec: str, mode: str, count: int, resolution: int) -> dict[str, Any]:
    """Start `count` workers at once; per-worker results plus peak node PSS and per-worker peak PSS."""
    env = {**os.environ, "PYTHONPATH": str(root), "SCALESEARCH_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, mode, spec, str(resolution)],
            env=env,
            # `python -c` puts the working directory first on sys.path: it must not hold a scalesearch.
            cwd=cache.parent,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    node_pss = 0
    worker_pss = [0] * count
    stop = threading.Event()

    def sample() -> None:
        nonlocal node_pss
        while not stop.is_set():
            readings = [smaps(p.pid) for p in procs]
            node_pss = max(node_pss, sum(r["Pss"] for r in readings))
            for i, r in enumerate(readings):
                worker_pss[i] = max(worker_pss[i], r["Pss"])
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    outputs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    stop.set()
    sampler.join()
    if any(p.returncode for p in procs):
        raise SystemExit(f"a worker failed ({[p.returncode for p in procs]})")
    return {"workers": outputs, "node_pss": node_pss, "worker_pss": worker_pss}


def code_roots(args: argparse.Namespace, scratch: Path) -> dict[str, Path]:
    """The code versions to measure: this tree, and the baseline commit if asked."""
    roots = {"this tree": REPO}
    if args.baseline_ref:
        target = scratch / "baseline"
        target.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.baseline_ref, "scalesearch", "search_spaces"],
            capture_output=True,
            check=True,
        ).stdout
        archive_path = scratch / "baseline.tar"
        archive_path.write_bytes(archive)
        with tarfile.open(archive_path) as tar:
            tar.extractall(target, filter="data")
        roots = {f"{args.baseline_ref} (before)": target, **roots}
    return roots


def gb(value: float) -> str:
    """Bytes as GB with 2 decimals."""
    return f"{value / 1e9:5.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=96, help="side of the generated PNGs in pixels")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=0, help="training resolution (0: the proxy's own)")
    parser.add_argument("--baseline-ref", help="also measure this git commit's code (e.g. the one before a change)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="concurrent workers per set-up")
    args = parser.parse_args()
    if not Path("/proc/self/smaps_rollup").exists():
        raise SystemExit("bench_memory.py needs Linux (/proc/PID/smaps_rollup)")

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        scratch = Path(tmp)
        folder = scratch / "images"
        start = time.perf_counter()
        write_folder(folder, args.images, args.size, args.classes)
        uint8 = args.images * 3 * args.size * args.size
        print(
            f"image folder: {args.images} RGB PNGs of {args.size}x{args.size} px, {args.classes} classes, "
            f"{uint8 / 1e6:.0f} MB as uint8 (written in {time.perf_counter() - start:.0f} s)"
        )
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        spec = f"imagefolder:{folder}"
        for number, (label, root) in enumerate(code_roots(args, scratch).items()):
            cache = scratch / f"cache-{number}"
            decode = run_workers(root, cache, spec, "load", 1, 0)["workers"][0]
            base = run_workers(root, cache, spec, "import", 1, 0)["workers"][0]["peak_rss"]
            # The framework's own share of a trial: the same training on 200 images of the same size.
            tiny = f"synthetic:n=200,classes={args.classes},size={args.size},channels=3"
            framework = run_workers(root, cache, tiny, "train", 1, args.resolution)["workers"][0]["peak_rss"]
            print(f"\n{label} ({Path(decode['code']).parent}):")
            print(
                f"  decode (cold cache) {decode['seconds']:.0f} s; imports alone: RSS {gb(base)}; "
                f"framework baseline (the same training on 200 images): RSS {gb(framework)}"
            )
            for count in args.workers:
                result = run_workers(root, cache, spec, "train", count, args.resolution)
                rss = [w["peak_rss"] for w in result["workers"]]
                speed = ", ".join(f"{w['images_per_second']:.0f}" for w in result["workers"])
                resolution = result["workers"][0]["resolution"]
                print(
                    f"  {count} worker(s) at {resolution} px: peak RSS per worker {', '.join(gb(v) for v in rss)}; "
                    f"peak PSS per worker {', '.join(gb(v) for v in result['worker_pss'])}; "
                    f"node (sum of PSS) {gb(result['node_pss'])}  [{speed} images/s]"
                )
            resized = args.images * 3 * resolution * resolution
            print(
                f"  bound per worker (framework baseline + native uint8 + uint8 at {resolution} px): "
                f"{gb(framework + uint8 + resized)}"
            )
            sys.stdout.flush()


if __name__ == "__main__":
    main()
