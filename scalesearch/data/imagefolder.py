"""Image folders → uint8 arrays: one sub-folder per class, PNG, JPEG, BMP or WebP files of any size
and mode, decoded to one square size and channel count, with a list of the files that failed.
`scalesearch.data.datasets` caches the result on disk (keyed by the folder's content) and turns it into a Dataset.
"""

from __future__ import annotations

import os
import statistics
from typing import TYPE_CHECKING

import numpy as np

from scalesearch.core.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Proxies train at small resolutions; decoding folders to at most 128 px keeps the on-disk cache and
# the shared copies small (10k RGB images ≈ 0.5 GB) while leaving room to scale resolution up ~2×.
MAX_NATIVE_SIZE = 128
# PIL image modes that hold one intensity channel; everything else decodes to RGB.
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def list_folder(root: str) -> list[tuple[str, list[str]]]:
    """(class name, sorted image paths relative to root) per class sub-folder; UserError if unusable."""
    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    classes = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    if not classes:
        loose = [e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS)]
        hint = " (images lie directly in it; put them in one sub-folder per class)" if loose else ""
        raise UserError(f"{root}: no class sub-folders found{hint}")
    result = []
    real_root = os.path.realpath(root)
    for name in classes:
        # A class folder linked to a folder inside the dataset (its root, another class) would become one
        # more class holding the other classes' images. A link to a folder elsewhere is a real class.
        target = os.path.realpath(os.path.join(root, name))
        if os.path.islink(os.path.join(root, name)) and (
            target == real_root or target.startswith(real_root + os.sep) or real_root.startswith(target + os.sep)
        ):
            raise UserError(
                f"{os.path.join(root, name)}: class folder is a link to {target}, inside the dataset folder "
                "(it would be one more class holding other classes' images); remove the link"
            )
        rels: list[str] = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rels.extend(
                os.path.relpath(os.path.join(dirpath, f), root)
                for f in filenames
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
            )
        if not rels:
            raise UserError(f"{os.path.join(root, name)}: class folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        result.append((name, sorted(rels)))
    if len(result) < 2:
        raise UserError(f"{root}: found a single class ({result[0][0]!r}); classification needs at least 2")
    return result


def decode_folder(root: str, files: list[tuple[str, list[str]]]) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Every image decoded to a common square size and channel count; also the list of bad files.

    Each image is first shrunk (aspect kept) so its shorter side is at most MAX_NATIVE_SIZE, which bounds
    memory in one decoding pass; the common size is the median shorter side. Then every image is resized
    so its shorter side matches it (antialiased) and centre-cropped to a square.
    """
    from PIL import Image

    thumbs: list[Image.Image] = []
    labels: list[int] = []
    bad: list[str] = []
    gray = True
    for label, (_, rels) in enumerate(files):
        for rel in rels:
            try:
                image, is_gray = _decode_one(os.path.join(root, rel))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                bad.append(f"{rel} ({_short_reason(error)})")
                continue
            thumbs.append(image)
            labels.append(label)
            gray = gray and is_gray
    if not thumbs:
        return (np.zeros((0, 1, 1, 1), np.uint8), np.zeros(0, np.int64), [n for n, _ in files], bad)

    side = int(statistics.median_low(min(im.size) for im in thumbs))
    mode = "L" if gray else "RGB"
    channels = 1 if gray else 3
    images = np.empty((len(thumbs), channels, side, side), dtype=np.uint8)
    for i, image in enumerate(thumbs):
        square = _resize_crop(image.convert(mode), side)
        array = np.asarray(square, dtype=np.uint8)
        images[i] = array[None] if gray else array.transpose(2, 0, 1)
    return images, np.asarray(labels, dtype=np.int64), [name for name, _ in files], bad


def _decode_one(path: str) -> tuple[Image.Image, bool]:
    """(image, is_gray): fully decoded, transparency composited on black, shrunk to ≤ MAX_NATIVE_SIZE."""
    from PIL import Image

    with Image.open(path) as opened:
        # JPEG can decode at 1/2..1/8 scale directly, which makes big photos cheap.
        opened.draft("RGB" if opened.mode not in _GRAY_MODES else "L", (MAX_NATIVE_SIZE, MAX_NATIVE_SIZE))
        opened.load()
        image: Image.Image = opened
        is_gray = image.mode in _GRAY_MODES
        if image.mode.startswith("I;16"):
            # 16-bit grayscale: keep the top 8 bits instead of PIL's clipping to 255.
            image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8), "L")
        elif image.mode in ("I", "F"):
            image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
        elif image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        image = image.convert("L" if is_gray else "RGB")
    scale = MAX_NATIVE_SIZE / min(image.size)
    if scale < 1:
        size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return image, is_gray


def _resize_crop(image: Image.Image, side: int) -> Image.Image:
    """The image resized (antialiased) so its shorter side is `side`, then centre-cropped to side×side."""
    from PIL import Image

    width, height = image.size
    scale = side / min(width, height)
    size = (max(side, round(width * scale)), max(side, round(height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (size[0] - side) // 2, (size[1] - side) // 2
    return image.crop((left, top, left + side, top + side))


def _short_reason(error: BaseException) -> str:
    """A few words on why an image failed to decode."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "truncated" in text.lower():
        return "truncated"
    if "cannot identify" in text.lower():
        return "not a readable image"
    return text[:80]
