"""`scalesearch data SPEC`: what a dataset spec reads to — classes, sizes, split, skipped files."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "data",
        help="read a dataset spec and print its classes, native size, channels and split",
        description="Read a dataset (digits, synthetic[:key=value,...], imagefolder:PATH or a directory, "
        "npz:PATH) and print what was read: classes with counts, native size, channels, the "
        "train/validation split and any skipped image files.",
    )
    parser.add_argument("spec", metavar="SPEC", help="dataset spec, e.g. digits or imagefolder:./photos")
    add_dataset_options(parser)
    parser.add_argument("--val-fraction", type=float, default=None, help="validation share (default 0.2)")
    parser.add_argument("--split-seed", type=int, default=None, help="seed of the split (default 0)")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    return parser


def add_dataset_options(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that reads a dataset."""
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out unreadable image files (and report how many) instead of stopping",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where decoded image folders are cached (default $SCALESEARCH_CACHE or ~/.cache/scalesearch)",
    )


def describe(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """What the dataset and its split hold, as plain data (the JSON output)."""
    from scalesearch.config.recipe import Recipe
    from scalesearch.data.datasets import load_dataset
    from scalesearch.data.prep import split_dataset

    overrides = {"val_fraction": args.val_fraction, "split_seed": args.split_seed}
    recipe = Recipe.from_mapping({k: v for k, v in overrides.items() if v is not None})
    dataset = load_dataset(spec, skip_bad_images=args.skip_bad_images, cache_dir=args.cache_dir)
    split = split_dataset(dataset, val_fraction=recipe.val_fraction, seed=recipe.split_seed)
    # An image folder of mixed sizes is decoded to one square size (imagefolder.decode_folder): say
    # so, with the range, rather than a bare "native size" that reads as if every image had it.
    sizes: set[tuple[int, int]] = set()
    kind, _, rest = dataset.spec.partition(":")
    folder = rest if kind == "imagefolder" else None
    if kind not in ("digits", "synthetic", "npz", "imagefolder") and os.path.isdir(dataset.spec):
        folder = dataset.spec
    if folder:
        from PIL import Image

        from scalesearch.data.imagefolder import list_folder

        root = os.path.realpath(folder)
        for _, rels in list_folder(root):
            for rel in rels:
                unreadable = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # listed as skipped
                with contextlib.suppress(*unreadable), Image.open(os.path.join(root, rel)) as image:  # its header
                    sizes.add(image.size)
    by_area = sorted(sizes, key=lambda size: (size[0] * size[1], min(size)))
    total = dataset.labels.bincount(minlength=dataset.num_classes).tolist()
    in_val = dataset.labels[split.val_indices].bincount(minlength=dataset.num_classes).tolist()
    return {
        "spec": dataset.spec,
        "images": len(dataset.labels),
        "classes": [
            {"class": name, "images": n, "train": n - v, "val": v}
            for name, n, v in zip(dataset.class_names, total, in_val)
        ],
        "native_size": dataset.native_size,
        # (smallest, largest) by area when a folder's images differ in size, else null
        "image_sizes": [list(by_area[0]), list(by_area[-1])] if len(sizes) > 1 else None,
        "channels": dataset.in_channels,
        "split": {
            "train": len(split.train_indices),
            "val": len(split.val_indices),
            "val_fraction": recipe.val_fraction,
            "seed": recipe.split_seed,
        },
        "mean": [round(v, 4) for v in split.mean],
        "std": [round(v, 4) for v in split.std],
        "augment_default": dataset.augment_default,
        "skipped": dataset.skipped,
    }


def run(args: argparse.Namespace) -> int:
    from scalesearch.core.tables import text_table

    info = describe(args.spec, args)
    if args.format == "json":
        print(json.dumps(info, indent=2))
        return 0
    split = info["split"]
    size = info["native_size"]
    differ = ""
    if info["image_sizes"]:
        (w0, h0), (w1, h1) = info["image_sizes"]
        from scalesearch.data.imagefolder import MAX_NATIVE_SIZE

        differ = (f" (images differ: {w0}×{h0} to {w1}×{h1}; each is resized so its shorter side is {size} px, "
                  f"the median shorter side (at most {MAX_NATIVE_SIZE}), and centre-cropped to a square)")  # fmt: skip
    lines = [
        f"dataset: {info['spec']}",
        f"images: {info['images']:,}  classes: {len(info['classes'])}  native size: {size}×{size}{differ}  "
        f"channels: {info['channels']}",
        f"split: train {split['train']:,} / val {split['val']:,} "
        f"(val_fraction {split['val_fraction']:g}, seed {split['seed']}, stratified)",
        f"train mean: {info['mean']}  std: {info['std']}  augmentation by default: "
        f"{'on' if info['augment_default'] else 'off'}",
        "",
        text_table(info["classes"], ["class", "images", "train", "val"]),
        "",
        f"skipped files: {len(info['skipped'])}",
    ]
    lines.extend(f"  {entry}" for entry in info["skipped"])
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
