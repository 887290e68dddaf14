"""`scalesearch train`: train one scaled proxy variant and print its per-epoch metrics."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from scalesearch.commands.data import add_dataset_options
from scalesearch.errors import UserError

EPOCH_COLUMNS = ["epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds", "img/s"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train one scaled proxy (alpha, beta, gamma at phi) on a dataset",
        description="Scale the space's proxy by alpha^phi, beta^phi, gamma^phi, train it with the space's "
        "recipe on the dataset, and print per-epoch validation metrics, params and FLOPs. "
        "This is exactly what one search trial does.",
    )
    parser.add_argument(
        "--space", default="efficientnet_b0", help="search-space YAML or shipped name (default: efficientnet_b0)"
    )
    parser.add_argument("--dataset", default="digits", help="dataset spec (default: digits)")
    parser.add_argument("--alpha", type=float, required=True, help="depth coefficient")
    parser.add_argument("--beta", type=float, required=True, help="width coefficient")
    parser.add_argument("--gamma", type=float, required=True, help="resolution coefficient")
    parser.add_argument("--phi", type=float, default=1.0, help="compound coefficient (default 1)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, batch order, augmentation")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_dataset_options(parser)
    parser.add_argument("--format", choices=["table", "json"], default="table")
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from scalesearch.cost import measure_cost
    from scalesearch.data import load_dataset
    from scalesearch.recipe import Recipe
    from scalesearch.scaling import Coefficients
    from scalesearch.spaces import load_space
    from scalesearch.train import TrainingDiverged, train_model

    for name in ("alpha", "beta", "gamma"):
        value = getattr(args, name)
        if not math.isfinite(value) or value <= 0:
            raise UserError(f"--{name} must be a positive number, got {value:g}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.device is not None:
        if args.device.split(":")[0] not in ("cpu", "cuda"):
            raise UserError(f"--device must be cpu or cuda, got {args.device!r}")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available")

    space = load_space(args.space)
    recipe = Recipe.from_mapping(space.recipe)
    if args.epochs is not None:
        # A shorter run keeps at most its own length of warm-up.
        recipe = recipe.replace(epochs=args.epochs, warmup_epochs=min(recipe.warmup_epochs, max(args.epochs, 0)))
    dataset = load_dataset(args.dataset, skip_bad_images=args.skip_bad_images, cache_dir=args.cache_dir)
    coefficients = Coefficients(args.alpha, args.beta, args.gamma)
    spec = space.scaled_proxy(coefficients, args.phi, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    if dataset.skipped:
        print(f"skipped {len(dataset.skipped)} unreadable image file(s)", file=sys.stderr)
    cost = measure_cost(space.proxy_family.build(spec), resolution=spec.resolution, in_channels=spec.in_channels)

    progress = _progress(recipe.epochs, enabled=args.format == "table")
    rows: list[dict[str, Any]] = []

    def on_epoch(m: Any) -> None:
        rows.append(
            {
                "epoch": m.epoch,
                "train_loss": m.train_loss,
                "val_loss": m.val_loss,
                "val_acc": m.val_accuracy,
                "lr": m.lr,
                "seconds": round(m.epoch_seconds, 2),
                "img/s": round(m.images_per_second),
            }
        )
        if progress is not None:
            progress.set_postfix(val_acc=f"{m.val_accuracy:.3f}", loss=f"{m.train_loss:.3f}")
            progress.update(1)

    try:
        result = train_model(
            lambda: space.proxy_family.build(spec),
            dataset,
            recipe,
            resolution=spec.resolution,
            seed=args.seed,
            threads=args.threads,
            device=args.device,
            on_epoch=on_epoch,
        )
    except TrainingDiverged as error:
        print(f"scalesearch train: training diverged: {error}; try a lower learning rate", file=sys.stderr)
        return 1
    finally:
        if progress is not None:
            progress.close()

    summary = {
        "space": space.name,
        "dataset": dataset.spec,
        "coefficients": coefficients.as_dict(),
        "phi": args.phi,
        "model": {
            "width_mult": spec.width_mult,
            "depth_mult": spec.depth_mult,
            "resolution": spec.resolution,
            "num_classes": spec.num_classes,
            "in_channels": spec.in_channels,
            "dropout": spec.dropout,
        },
        "params": cost.params,
        "flops": cost.flops,
        "recipe": recipe.to_dict(),
        "seed": args.seed,
        "device": result.device,
        "final_val_accuracy": result.final_val_accuracy,
        "best_val_accuracy": result.best_val_accuracy,
        "seconds": round(result.seconds, 3),
        "skipped_files": len(dataset.skipped),
        "epochs": [
            {
                "epoch": m.epoch,
                "train_loss": m.train_loss,
                "val_loss": m.val_loss,
                "val_accuracy": m.val_accuracy,
                "lr": m.lr,
                "epoch_seconds": m.epoch_seconds,
                "images_per_second": m.images_per_second,
            }
            for m in result.epochs
        ],
    }
    if args.format == "json":
        print(json.dumps(summary, indent=2))
    else:
        print(_render(summary, rows))
    return 0


def _progress(total: int, *, enabled: bool) -> Any:
    """A tqdm bar over epochs on stderr (only on a terminal, so logs stay clean), or None."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="training", unit="epoch", file=sys.stderr, leave=False)


def _render(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The per-epoch table and the final summary lines."""
    from scalesearch.tables import text_table

    c = summary["coefficients"]
    m = summary["model"]
    header = (
        f"{summary['space']} proxy at phi={summary['phi']:g} (alpha={c['alpha']:g}, beta={c['beta']:g}, "
        f"gamma={c['gamma']:g}): width x{m['width_mult']:.3g}, depth x{m['depth_mult']:.3g}, "
        f"{m['resolution']} px, on {summary['dataset']} ({summary['device']}, seed {summary['seed']})"
    )
    return "\n".join(
        [
            header,
            "",
            text_table(rows, EPOCH_COLUMNS),
            "",
            f"final val accuracy: {summary['final_val_accuracy']:.4f}  (best {summary['best_val_accuracy']:.4f})",
            f"params: {summary['params']:,}  FLOPs: {summary['flops']:,}  time: {summary['seconds']:.1f} s",
        ]
    )
