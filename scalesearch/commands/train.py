"""`scalesearch train`: train one proxy network, as a search trial does, and print its per-epoch metrics."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from scalesearch.commands.data import add_dataset_options
from scalesearch.core.errors import UserError

if TYPE_CHECKING:
    pass

EPOCH_COLUMNS = ["epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds", "img/s"]
# Flags that name what to train; --from takes all of them from the run.
NETWORK_FLAGS = ("space", "dataset", "alpha", "beta", "gamma", "phi", "constraint", "base_resolution")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train one proxy network: a run's trial again (--from), or the one a search trains for alpha, beta, gamma",
        description="Train one proxy network through the same runner as a search trial and print per-epoch "
        "validation metrics, params and FLOPs. Two ways to say which network: "
        "--from RUN_DIR trains the network of the run's chosen trial (best.json's trial, or --trial N) "
        "exactly as trained there: its trials.csv row's width and depth multipliers and resolution, the "
        "run's dropout, dataset, recipe and epochs, and the row's seed; params and FLOPs equal the row's, "
        "and on the same machine and threads so does the accuracy (--epochs and --seed change it "
        "deliberately). --alpha/--beta/--gamma at --phi train what a search proposing these coefficients "
        "would train: the realizable proxy network at --phi (measured --constraint within target^phi +- "
        "tolerance of the proxy base) whose realized shares are nearest the shares the coefficients ask "
        "for; it says how far it lies from them. At phi 0 that is the proxy base.",
    )
    parser.add_argument("--from", dest="from_run", metavar="RUN_DIR", default=None, help="a finished search run")
    parser.add_argument(
        "--trial", type=int, default=None, help="with --from: this trial of trials.csv (default: best.json's)"
    )
    parser.add_argument("--space", default=None, help="search-space YAML or shipped name (default: efficientnet_b0)")
    parser.add_argument("--dataset", default=None, help="dataset spec (default: the space's, as for search)")
    parser.add_argument("--alpha", type=float, default=None, help="depth coefficient")
    parser.add_argument("--beta", type=float, default=None, help="width coefficient")
    parser.add_argument("--gamma", type=float, default=None, help="resolution coefficient")
    parser.add_argument("--phi", type=float, default=None, help="compound coefficient (default 1)")
    parser.add_argument(
        "--constraint",
        default=None,
        help="the cost the budget at phi is on: flops, params, activations, latency (default: the space's "
        "search setting, else flops)",
    )
    parser.add_argument(
        "--base-resolution",
        default=None,
        metavar="PX|off",
        help="the resolution the target base (B0) is deployed at; the proxy sees the data with the same headroom "
        "(default: the space's search: base_resolution, else its base resolution; off: the stored images as they are)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's (or the run's) epochs")
    parser.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                        help="with --alpha/--beta/--gamma: change one field of the space's proxy recipe, e.g. "
                        "--recipe init=zero (repeatable)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=None, help="seed of weights, batch order, augmentation "
                        "(default: 0; with --from the trial's)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice; "
                        "with --from the run's CPUs per trial)")  # fmt: skip
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available; "
                        "with --from the run's)")  # fmt: skip
    add_dataset_options(parser)
    parser.add_argument("--format", choices=["table", "json"], default="table")
    return parser


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: `scalesearch --help` imports every command, and these import torch.
    from scalesearch.config.settings import parse_base_resolution
    from scalesearch.config.spaces import DEFAULT_SPACE, load_space
    from scalesearch.core.scaling import Coefficients
    from scalesearch.data.datasets import load_dataset
    from scalesearch.validation.one_proxy import job_from_coefficients, job_from_run, summarize_training, train_network

    _check_flags(args)
    dataset_options = {"skip_bad_images": args.skip_bad_images, "cache_dir": args.cache_dir}
    if args.from_run is not None:
        job, network, described, dataset = job_from_run(
            args.from_run, trial=args.trial, seed=args.seed, epochs=args.epochs, dataset_options=dataset_options
        )
    else:
        # As search does: the flag, else the space's `search: dataset`, else digits.
        space_path = args.space or DEFAULT_SPACE
        spec = args.dataset or load_space(space_path).search.get("dataset") or "digits"
        dataset = load_dataset(str(spec), **dataset_options)
        job, network, described = job_from_coefficients(
            space_path,
            Coefficients(args.alpha, args.beta, args.gamma),
            dataset,
            phi=1.0 if args.phi is None else args.phi,
            constraint=args.constraint,
            seed=0 if args.seed is None else args.seed,
            epochs=args.epochs,
            threads=args.threads,
            base_resolution=parse_base_resolution(args.base_resolution),
            recipe_overrides=args.recipe,
        )
    if dataset.skipped:
        print(f"skipped {len(dataset.skipped)} unreadable image file(s)", file=sys.stderr)
    if args.threads is not None:
        job = replace(job, threads=args.threads)
    if args.device is not None:
        job = replace(job, device=args.device)

    outcome, epochs = train_network(
        job, dataset, progress=_progress(int(job.recipe["epochs"]), enabled=args.format == "table")
    )
    if outcome.status != "completed":
        hint = "; try a lower learning rate" if outcome.error.startswith("diverged") else ""
        print(f"scalesearch train: training failed: {outcome.error}{hint}", file=sys.stderr)
        return 1
    summary = summarize_training(job, network, described, outcome, epochs, skipped=len(dataset.skipped))
    if args.format == "json":
        print(json.dumps(summary, indent=2))
    else:
        print(_render(summary))
    return 0


def _check_flags(args: argparse.Namespace) -> None:
    """UserError for flags that cannot work together or cannot work at all, before anything loads."""
    if args.from_run is not None:
        given = [name for name in NETWORK_FLAGS if getattr(args, name) is not None]
        if given:
            flags = ", ".join("--" + name for name in given)
            raise UserError(f"--from trains the run's own network on the run's data; drop {flags}")
        if args.recipe:
            raise UserError("--from trains with the run's own recipe; drop --recipe")
    else:
        if args.trial is not None:
            raise UserError("--trial needs --from RUN_DIR")
        missing = [name for name in ("alpha", "beta", "gamma") if getattr(args, name) is None]
        if missing:
            raise UserError(f"say what to train: --from RUN_DIR, or --alpha, --beta and --gamma (missing: "
                            f"{', '.join('--' + name for name in missing)})")  # fmt: skip
        for name in ("alpha", "beta", "gamma"):
            value = getattr(args, name)
            if not math.isfinite(value) or value <= 0:
                raise UserError(f"--{name} must be a positive number, got {value:g}")
        if args.phi is not None and (not math.isfinite(args.phi) or args.phi < 0):
            raise UserError(f"--phi must be a finite number >= 0, got {args.phi:g}")
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {args.epochs}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.device is not None:
        if args.device.split(":")[0] not in ("cpu", "cuda"):
            raise UserError(f"--device must be cpu or cuda, got {args.device!r}")
        import torch

        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available")


def _progress(total: int, *, enabled: bool) -> Any:
    """A tqdm bar over epochs on stderr (only on a terminal, so logs stay clean), or None."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="training", unit="epoch", file=sys.stderr, leave=False)


def _render(summary: dict[str, Any]) -> str:
    """The per-epoch table and the final summary lines."""
    from scalesearch.core.tables import text_table

    m = summary["model"]
    what = f"width x{m['width_mult']:.4g}, depth x{m['depth_mult']:.4g}, {m['resolution']} px, dropout {m['dropout']:g}"
    if "from" in summary:
        source = summary["from"]
        header = f"trial {source['trial']} of {source['run']} (network {summary['network']}): {what}"
    else:
        c = summary["coefficients"]
        header = (
            f"{summary['space']} proxy at phi={summary['phi']:g} for alpha={c['alpha']:g}, beta={c['beta']:g}, "
            f"gamma={c['gamma']:g}: network {summary['network']}, {what}"
        )
        if "share_error" in summary:
            asked, got = summary["requested_shares"], summary["realized_shares"]
            header += (
                f"\n  shares depth/width/resolution asked {asked['depth']:.2f}/{asked['width']:.2f}/"
                f"{asked['resolution']:.2f}, trained {got['depth']:.2f}/{got['width']:.2f}/{got['resolution']:.2f} "
                f"(share error {summary['share_error']:.2f}); {summary['constraint']} "
                f"{summary['constraint_ratio']:.3f}x the proxy base"
            )
    header += (
        f"\n  on {summary['dataset']} ({summary['device']}, {summary['threads']} thread(s), seed {summary['seed']})"
    )
    view = summary.get("data_view") or {}
    if view.get("base_resolution"):
        header += f"; the images resized to {view['size']} px first (target base at {view['base_resolution']} px)"
    rows = [
        {
            "epoch": e["epoch"],
            "train_loss": e["train_loss"],
            "val_loss": e["val_loss"],
            "val_acc": e["val_accuracy"],
            "lr": e["lr"],
            "seconds": round(e["epoch_seconds"], 2),
            "img/s": round(e["images_per_second"]),
        }
        for e in summary["epochs"]
    ]
    lines = [
        header,
        "",
        text_table(rows, EPOCH_COLUMNS),
        "",
        f"final val accuracy: {summary['final_val_accuracy']:.4f}  (best {summary['best_val_accuracy']:.4f})",
    ]
    if "from" in summary and summary["from"].get("final_val_accuracy") is not None:
        source = summary["from"]
        lines.append(
            f"in the run (seed {source['seed']}, {source['epochs_run']} epoch(s)): {source['final_val_accuracy']:.4f}"
        )
    lines.append(f"params: {summary['params']:,}  FLOPs: {summary['flops']:,}  time: {summary['seconds']:.1f} s")
    return "\n".join(lines)
