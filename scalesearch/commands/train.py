"""`scalesearch train`: train one proxy network, as a search trial does, and print its per-epoch metrics."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from scalesearch.commands.data import add_dataset_options
from scalesearch.errors import UserError

if TYPE_CHECKING:
    from scalesearch.data import Dataset
    from scalesearch.planner import Network
    from scalesearch.runner import Outcome, TrainJob
    from scalesearch.spaces import SearchSpace

EPOCH_COLUMNS = ["epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds", "img/s"]
# Flags that name what to train; --from takes all of them from the run.
NETWORK_FLAGS = ("space", "dataset", "alpha", "beta", "gamma", "phi", "constraint")


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
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's (or the run's) epochs")
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
    from scalesearch.data import load_dataset

    _check_flags(args)
    dataset_options = {"skip_bad_images": args.skip_bad_images, "cache_dir": args.cache_dir}
    if args.from_run is not None:
        job, network, described, dataset = _from_run(args, dataset_options)
    else:
        from scalesearch.spaces import DEFAULT_SPACE, load_space

        # As search does: the flag, else the space's `search: dataset`, else digits.
        spec = args.dataset or load_space(args.space or DEFAULT_SPACE).search.get("dataset") or "digits"
        dataset = load_dataset(str(spec), **dataset_options)
        job, network, described = _from_coefficients(args, dataset)
    if dataset.skipped:
        print(f"skipped {len(dataset.skipped)} unreadable image file(s)", file=sys.stderr)
    if args.threads is not None:
        job = replace(job, threads=args.threads)
    if args.device is not None:
        job = replace(job, device=args.device)

    outcome, epochs = _train(
        job, dataset, progress=_progress(int(job.recipe["epochs"]), enabled=args.format == "table")
    )
    if outcome.status != "completed":
        hint = "; try a lower learning rate" if outcome.error.startswith("diverged") else ""
        print(f"scalesearch train: training failed: {outcome.error}{hint}", file=sys.stderr)
        return 1
    summary = _summary(job, network, described, outcome, epochs, skipped=len(dataset.skipped))
    if args.format == "json":
        print(json.dumps(summary, indent=2))
    else:
        print(_render(summary))
    return 0


def _train(job: TrainJob, dataset: Dataset, *, progress: Any) -> tuple[Outcome, list[Any]]:
    """Train `job` on `dataset` through the runner, as a search trial; its outcome and per-epoch metrics."""
    from scalesearch.data import standing_in
    from scalesearch.runner import train_job

    epochs: list[Any] = []

    def on_epoch(accuracy: float, metrics: Any, costs: Any) -> None:
        epochs.append(metrics)
        if progress is not None:
            progress.set_postfix(val_acc=f"{accuracy:.3f}", loss=f"{metrics.train_loss:.3f}")
            progress.update(1)

    try:
        # train_job loads its dataset by spec alone (TrainJob has no skip_bad_images or cache_dir), and
        # load_dataset refuses a folder with unreadable files without that flag: lend it the one loaded here.
        with standing_in(dataset, job.dataset):
            outcome = train_job(job, on_epoch)
    finally:
        if progress is not None:
            progress.close()
    return outcome, epochs


def _summary(
    job: TrainJob, network: Network, described: dict[str, Any], outcome: Outcome, epochs: list[Any], *, skipped: int
) -> dict[str, Any]:
    """What `--format json` prints (and the table renders): the network, its cost, the run and each epoch."""
    spec = job.model_spec()
    return {
        **described,
        "dataset": job.dataset,
        "network": network.key,
        "model": {
            "width_mult": spec.width_mult,
            "depth_mult": spec.depth_mult,
            "resolution": spec.resolution,
            "num_classes": spec.num_classes,
            "in_channels": spec.in_channels,
            "dropout": spec.dropout,
        },
        "realized": {
            "depth": network.depth,
            "width": network.width,
            "resolution": network.resolution,
        },
        "params": network.params,
        "flops": network.flops,
        "constraint": network.constraint,
        "constraint_ratio": network.ratio,
        "recipe": dict(job.recipe),
        "seed": job.seed,
        "threads": job.threads,
        "device": job.device,
        "final_val_accuracy": outcome.accuracies[-1],
        "best_val_accuracy": max(outcome.accuracies),
        "seconds": round(outcome.seconds, 3),
        "skipped_files": skipped,
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
            for m in epochs
        ],
    }


def _check_flags(args: argparse.Namespace) -> None:
    """UserError for flags that cannot work together or cannot work at all, before anything loads."""
    if args.from_run is not None:
        given = [name for name in NETWORK_FLAGS if getattr(args, name) is not None]
        if given:
            flags = ", ".join("--" + name for name in given)
            raise UserError(f"--from trains the run's own network on the run's data; drop {flags}")
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


def _recipe(recipe: Any, epochs: int | None) -> dict[str, Any]:
    """The recipe as a TrainJob carries it, with --epochs applied (a shorter run keeps at most its own
    length of warm-up)."""
    if epochs is not None:
        recipe = recipe.replace(epochs=epochs, warmup_epochs=min(recipe.warmup_epochs, epochs))
    return dict(recipe.to_dict())


def _from_run(
    args: argparse.Namespace, dataset_options: dict[str, Any]
) -> tuple[TrainJob, Network, dict[str, Any], Dataset]:
    """The job that trains a run's trial again: its trials.csv row's network, the run's settings."""
    from scalesearch.data import load_dataset
    from scalesearch.runner import jobs_for
    from scalesearch.runs import TRIALS, read_run
    from scalesearch.spaces import load_space
    from scalesearch.validate import run_settings

    run = read_run(args.from_run)
    number = args.trial if args.trial is not None else run.best.get("trial")
    if not isinstance(number, int):
        raise UserError(f"{run.path / 'best.json'} names no trial; pass --trial N")
    rows = run.trials()
    if number not in rows:
        known = f"{min(rows)}..{max(rows)}" if rows else "none"
        raise UserError(f"{run.path / TRIALS} has no finished trial {number} (trials: {known})")
    row = rows[number]
    settings = run_settings(run, quiet=True)
    space = load_space(settings.space_path)
    dataset = load_dataset(settings.dataset, **dataset_options)
    network = _row_network(space, settings.phi, row, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    seed = args.seed if args.seed is not None else int(row["seed"])
    job = jobs_for(settings, [(network.spec, seed, f"trial {number}")])[0]
    job = replace(job, recipe=_recipe(settings.training_recipe(), args.epochs), measure_costs=False)
    described = {
        "space": space.name,
        "from": {
            "run": str(run.path),
            "trial": number,
            "stage": row.get("stage"),
            "seed": row.get("seed"),
            "final_val_accuracy": row.get("final_val_accuracy"),
            "epochs_run": row.get("epochs_run"),
        },
    }
    return job, network, described, dataset


def _row_network(space: SearchSpace, phi: float, row: dict[str, Any], *, num_classes: int, in_channels: int) -> Network:
    """The network of a trials.csv row, rebuilt from the run's space and measured again; UserError when
    it is not the network the row names (the space file changed since the run)."""
    from scalesearch.families import ModelSpec
    from scalesearch.planner import Network, measurer_for

    # trials.csv has no dropout column: the planner gives every network of a run the proxy's dropout at
    # the run's φ, and the network key below (which covers dropout) checks it.
    spec = ModelSpec(
        width_mult=float(row["width_mult"]),
        depth_mult=float(row["depth_mult"]),
        resolution=int(row["resolution"]),
        num_classes=num_classes,
        in_channels=in_channels,
        dropout=space.proxy.dropout.at(phi),
    )
    params, flops = measurer_for(space.proxy_family, in_channels).measured(spec)
    network = Network(
        spec=spec,
        params=params,
        flops=flops,
        ratio=float(row["constraint_ratio"]),
        constraint=str(row["constraint"]),
        depth=float(row["realized_depth"]),
        width=float(row["realized_width"]),
        resolution=float(row["realized_resolution"]),
        flops_ratio=float(row["flops_ratio"]),
    )
    if network.key != row["network"] or (params, flops) != (row["params"], row["flops"]):
        raise UserError(
            f"trial {row['trial']}'s network {row['network']} (params {row['params']}, FLOPs {row['flops']}) no "
            f"longer builds from {space.path}: it gives {network.key} (params {params}, FLOPs {flops}); was the "
            "space file changed since the run?"
        )
    return network


def _from_coefficients(args: argparse.Namespace, dataset: Dataset) -> tuple[TrainJob, Network, dict[str, Any]]:
    """The job that trains what a search proposing --alpha/--beta/--gamma at --phi would train."""
    from dataclasses import asdict

    from scalesearch.planner import realizable_set, requested_shares, share_error
    from scalesearch.recipe import Recipe
    from scalesearch.runner import TrainJob
    from scalesearch.scaling import Coefficients
    from scalesearch.spaces import DEFAULT_SPACE, load_space
    from scalesearch.validate import base_network, infeasible_reason

    space = load_space(args.space or DEFAULT_SPACE)
    phi = 1.0 if args.phi is None else args.phi
    constraint = args.constraint or str(space.search.get("constraint", "flops"))
    coefficients = Coefficients(args.alpha, args.beta, args.gamma)
    described: dict[str, Any] = {"space": space.name, "coefficients": coefficients.as_dict(), "phi": phi}
    if phi == 0:
        network = base_network(
            space, num_classes=dataset.num_classes, in_channels=dataset.in_channels, constraint=constraint
        )
    else:
        shares = requested_shares(coefficients, space.target)
        found = realizable_set(
            space, num_classes=dataset.num_classes, in_channels=dataset.in_channels, phi=phi, constraint=constraint
        )
        if not found.networks:
            raise UserError(infeasible_reason(space, phi, constraint))
        network = found.nearest(shares)
        described["requested_shares"] = asdict(shares)
        described["realized_shares"] = asdict(network.shares)
        described["share_error"] = share_error(shares, network)
    import torch

    job = TrainJob(
        space_path=space.path,
        dataset=dataset.spec,
        recipe=_recipe(Recipe.from_mapping(space.recipe), args.epochs),
        spec=asdict(network.spec),
        seed=0 if args.seed is None else args.seed,
        threads=args.threads or torch.get_num_threads(),
        device="cuda" if torch.cuda.is_available() else "cpu",
        measure_costs=False,
        label="train",
    )
    return job, network, described


def _progress(total: int, *, enabled: bool) -> Any:
    """A tqdm bar over epochs on stderr (only on a terminal, so logs stay clean), or None."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="training", unit="epoch", file=sys.stderr, leave=False)


def _render(summary: dict[str, Any]) -> str:
    """The per-epoch table and the final summary lines."""
    from scalesearch.tables import text_table

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
