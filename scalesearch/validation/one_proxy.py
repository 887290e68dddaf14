"""One proxy network trained outside a search, as a search trial trains it (`scalesearch train`).

Either a run's trial again (`job_from_run`: its trials.csv row's network, rebuilt from the run's space
and checked against the row, with the run's settings), or the network a search proposing given
coefficients at φ would train (`job_from_coefficients`: the realizable network nearest their shares, the
proxy base at φ = 0). `train_network` trains the job through the runner and keeps each epoch's metrics;
`summarize_training` is what the command prints.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from scalesearch.config.recipe import Recipe, recipe_with_overrides
from scalesearch.config.spaces import SearchSpace, load_space
from scalesearch.core.errors import UserError
from scalesearch.core.scaling import Coefficients
from scalesearch.data.datasets import Dataset, load_dataset, standing_in
from scalesearch.execution.runner import Outcome, TrainJob, jobs_for, train_job
from scalesearch.models.spec import ModelSpec
from scalesearch.outputs.runs import TRIALS, read_run
from scalesearch.planning.data_view import data_view
from scalesearch.planning.planner import Network, measurer_for, realizable_set, requested_shares, share_error
from scalesearch.validation.validate import base_network, infeasible_reason, run_settings


def job_from_run(
    run_dir: str, *, trial: int | None, seed: int | None, epochs: int | None, dataset_options: dict[str, Any]
) -> tuple[TrainJob, Network, dict[str, Any], Dataset]:
    """The job that trains a run's trial again (`trial`, default the chosen one): its trials.csv row's
    network and the run's settings; with its network, what to print about it, and the dataset."""

    run = read_run(run_dir)
    number = trial if trial is not None else run.best.get("trial")
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
    network = row_network(space, settings.phi, row, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    seed = seed if seed is not None else int(row["seed"])
    view = data_view(space, dataset.native_size, settings.base_resolution, dataset=settings.dataset)
    job = jobs_for(settings, [(network.spec, seed, f"trial {number}")], view=view.resize)[0]
    job = replace(job, recipe=job_recipe(settings.training_recipe(), epochs), measure_costs=False)
    described = {
        "space": space.name,
        "data_view": view.to_dict(),
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


def row_network(space: SearchSpace, phi: float, row: dict[str, Any], *, num_classes: int, in_channels: int) -> Network:
    """The network of a trials.csv row, rebuilt from the run's space and measured again; UserError when
    it is not the network the row names (the space file changed since the run)."""

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


def job_from_coefficients(
    space_path: str,
    coefficients: Coefficients,
    dataset: Dataset,
    *,
    phi: float,
    constraint: str | None,
    seed: int,
    epochs: int | None,
    threads: int | None,
    base_resolution: int | str | None = None,
    recipe_overrides: list[str] | None = None,
) -> tuple[TrainJob, Network, dict[str, Any]]:
    """The job that trains what a search proposing `coefficients` at `phi` would train (φ = 0: the proxy
    base), seeing the data as that search would (`base_resolution`: None, the space's) and with its recipe
    (`recipe_overrides`: `--recipe KEY=VALUE` flags); with its network and what to print about it."""

    space = load_space(space_path)
    constraint = constraint or str(space.search.get("constraint", "flops"))
    view = data_view(space, dataset.native_size, base_resolution, dataset=dataset.spec)
    described: dict[str, Any] = {
        "space": space.name,
        "coefficients": coefficients.as_dict(),
        "phi": phi,
        "data_view": view.to_dict(),
    }
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
        recipe=job_recipe(Recipe.from_mapping(recipe_with_overrides(space.recipe, recipe_overrides)), epochs),
        spec=asdict(network.spec),
        seed=seed,
        threads=threads or torch.get_num_threads(),
        device="cuda" if torch.cuda.is_available() else "cpu",
        measure_costs=False,
        label="train",
        view=view.resize,
    )
    return job, network, described


def job_recipe(recipe: Any, epochs: int | None) -> dict[str, Any]:
    """The recipe as a TrainJob carries it, with --epochs applied (a shorter run keeps at most its own
    length of warm-up)."""
    if epochs is not None:
        recipe = recipe.replace(epochs=epochs, warmup_epochs=min(recipe.warmup_epochs, epochs))
    return dict(recipe.to_dict())


def train_network(job: TrainJob, dataset: Dataset, *, progress: Any) -> tuple[Outcome, list[Any]]:
    """Train `job` on `dataset` through the runner, as a search trial; its outcome and per-epoch metrics."""

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


def summarize_training(
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
