"""Datasets on small real data: digits, synthetic, image folders (mixed formats and modes), npz.

Also the split, the per-resolution resizing cache, augmentation, and every bad input of issue 3.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from scalesearch.cli import main
from scalesearch.core import machine
from scalesearch.core.errors import UserError
from scalesearch.data import cache as datacache
from scalesearch.data import datasets as data
from scalesearch.data.datasets import load_dataset
from scalesearch.data.prep import augment_batch, resized_images, split_dataset


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own on-disk cache and an empty per-process cache."""
    monkeypatch.setenv("SCALESEARCH_CACHE", str(tmp_path / "cache"))
    data.clear_dataset_cache()


def _gradient(rng: np.random.Generator, size: tuple[int, int], channels: int) -> np.ndarray:
    """A random smooth-ish uint8 image (H×W or H×W×C), so resizing has something to do."""
    shape = (size[1], size[0]) if channels == 1 else (size[1], size[0], channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def write_folder(root: Path, *, gray_only: bool = False) -> Path:
    """Three class folders of mixed formats (PNG, JPEG, BMP, WebP), modes and sizes; returns root."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name in ("cat", "dog", "emu"):
        (root / name).mkdir()
        gray = _gradient(rng, (24, 24), 1)
        Image.fromarray(gray, "L").save(root / name / "a.png")
        Image.fromarray(_gradient(rng, (30, 20), 1), "L").save(root / name / "b.jpg", quality=90)
        Image.fromarray(_gradient(rng, (24, 28), 1), "L").convert("LA").save(root / name / "c.png")
        if not gray_only:
            Image.fromarray(_gradient(rng, (24, 24), 3), "RGB").save(root / name / "d.bmp")
            Image.fromarray(_gradient(rng, (40, 32), 4), "RGBA").save(root / name / "e.webp", lossless=True)
            Image.fromarray(_gradient(rng, (24, 24), 3), "RGB").quantize(16).save(root / name / "f.png")
            # A file that is not an image is ignored, not an error.
            (root / name / "notes.txt").write_text("not an image")
    return root


# --- digits and synthetic -----------------------------------------------------------------------


def test_digits_is_sklearns_8x8_digits() -> None:
    dataset = load_dataset("digits")
    assert dataset.images.shape == (1797, 1, 8, 8)
    assert dataset.images.dtype == torch.uint8 and dataset.labels.dtype == torch.int64
    assert dataset.num_classes == 10 and dataset.in_channels == 1 and dataset.native_size == 8
    assert dataset.class_names == [str(i) for i in range(10)]
    assert sum(dataset.class_counts().values()) == 1797
    assert int(dataset.images.max()) == 255
    assert dataset.augment_default is False  # a flipped digit is another digit
    assert load_dataset("digits") is dataset  # per-process cache


def test_digits_match_sklearn_and_load_without_importing_it() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    expected = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    dataset = load_dataset("digits")
    assert np.array_equal(dataset.images.numpy(), expected)
    assert np.array_equal(dataset.labels.numpy(), bunch.target)
    # A search worker loads digits too: importing scikit-learn would cost it about 1.3 s.
    code = (
        "import sys; from scalesearch.data.datasets import load_dataset; load_dataset('digits'); "
        "print('sklearn' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def test_synthetic_is_deterministic_by_seed_and_configurable() -> None:
    first = load_dataset("synthetic:n=200,classes=4,size=16,channels=1,seed=3")
    data.clear_dataset_cache()
    again = load_dataset("synthetic:n=200,classes=4,size=16,channels=1,seed=3")
    other = load_dataset("synthetic:n=200,classes=4,size=16,channels=1,seed=4")
    assert first.images.shape == (200, 1, 16, 16)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, other.images)
    assert first.class_counts() == {name: 50 for name in first.class_names}  # balanced
    default = load_dataset("synthetic")
    assert (default.num_classes, default.in_channels, default.native_size, len(default.labels)) == (
        10,
        3,
        32,
        2000,
    )


def test_synthetic_classes_need_fine_detail_and_global_structure() -> None:
    """Stripe direction is visible at native size and vanishes at half size; the layout survives."""
    dataset = load_dataset("synthetic:n=400,classes=4,size=32,channels=1,noise=0.0")
    # With 4 classes: left/h-stripes, left/v-stripes, top/h-stripes, top/v-stripes.
    assert dataset.class_names == ["left/h-stripes", "left/v-stripes", "top/h-stripes", "top/v-stripes"]

    def vertical_energy(images: torch.Tensor, label: int) -> float:
        x = images[dataset.labels == label].float()
        return float((x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean())

    native, half = dataset.images, resized_images(dataset, 16)
    # h-stripes alternate down the rows; v-stripes do not.
    assert vertical_energy(native, 0) > 20 * vertical_energy(native, 1)
    assert vertical_energy(half, 0) < 0.05 * vertical_energy(native, 0)

    def left_minus_right(images: torch.Tensor, label: int) -> float:
        x = images[dataset.labels == label].float()
        w = x.shape[-1]
        return float(x[..., : w // 3].mean() - x[..., -w // 3 :].mean())

    # The "left" layout is bright on the left at any resolution; "top" is not.
    for images in (native, half, resized_images(dataset, 8)):
        assert left_minus_right(images, 0) > 40 and abs(left_minus_right(images, 2)) < 10


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("synthetic:colour=3", "unknown option"),
        ("synthetic:n=many", "expects a number"),
        ("synthetic:classes=1", "classes=1 is outside"),
        ("synthetic:classes=99", "outside"),
        ("synthetic:channels=2", "channels must be 1 or 3"),
    ],
)
def test_synthetic_bad_options(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_dataset(spec)


# --- image folders ------------------------------------------------------------------------------


def test_image_folder_with_mixed_formats_and_modes(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "pets")
    dataset = load_dataset(f"imagefolder:{root}")
    assert dataset.class_names == ["cat", "dog", "emu"]
    assert dataset.class_counts() == {"cat": 6, "dog": 6, "emu": 6}
    # RGB files present, so every image decodes to 3 channels; side = median shorter side (24).
    assert dataset.images.shape == (18, 3, 24, 24)
    assert dataset.in_channels == 3 and dataset.native_size == 24
    assert dataset.skipped == [] and dataset.augment_default is True
    # A grayscale PNG decodes to three equal channels.
    gray = dataset.images[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert torch.equal(gray[0], torch.from_numpy(np.array(Image.open(root / "cat" / "a.png"))))


def test_image_folder_of_grayscale_files_has_one_channel_and_bare_path_works(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "gray", gray_only=True)
    dataset = load_dataset(str(root))
    assert dataset.in_channels == 1 and dataset.images.shape == (9, 1, 24, 24)


def test_decoded_folder_is_cached_on_disk_keyed_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_folder(tmp_path / "pets")
    cache = tmp_path / "own-cache"
    first = load_dataset(f"imagefolder:{root}", cache_dir=str(cache))
    # One entry: images and labels as plain .npy files, the metadata written last.
    files = list(cache.glob("imagefolder-*.images.npy"))
    assert len(files) == 1 and len(list(cache.glob("imagefolder-*.json"))) == 1 and not list(cache.glob("*.tmp"))

    # A second run (fresh process cache) reads the cache instead of decoding.
    data.clear_dataset_cache()

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded again despite an up-to-date cache")

    monkeypatch.setattr(data, "decode_folder", no_decoding)
    second = load_dataset(f"imagefolder:{root}", cache_dir=str(cache))
    assert torch.equal(first.images, second.images) and second.class_names == first.class_names

    # Changing a file changes the key, so the folder is decoded again.
    monkeypatch.undo()
    Image.new("L", (24, 24), 7).save(root / "cat" / "a.png")
    os.utime(root / "cat" / "a.png", ns=(1, 1))
    data.clear_dataset_cache()
    third = load_dataset(f"imagefolder:{root}", cache_dir=str(cache))
    assert len(list(cache.glob("imagefolder-*.images.npy"))) == 2
    assert int(third.images[0].max()) == 7


def test_corrupt_and_truncated_images_are_named_or_skipped(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "pets")
    (root / "cat" / "broken.png").write_bytes(b"this is not a png at all")
    whole = (root / "dog" / "a.png").read_bytes()
    (root / "dog" / "cut.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError) as caught:
        load_dataset(str(root))
    message = str(caught.value)
    assert "2 unreadable image file(s)" in message
    assert "broken.png" in message and "cut.png" in message and "--skip-bad-images" in message

    dataset = load_dataset(str(root), skip_bad_images=True)
    assert len(dataset.skipped) == 2 and len(dataset.labels) == 18
    # The cached decode still refuses the bad files without the flag.
    data.clear_dataset_cache()
    with pytest.raises(UserError, match="unreadable"):
        load_dataset(str(root))


def test_class_left_without_readable_images(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
    Image.new("L", (8, 8)).save(root / "a" / "x.png")
    (root / "b" / "x.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError, match=r"b: no readable images left"):
        load_dataset(str(root), skip_bad_images=True)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "no class sub-folders"),
        ({"loose.png": None}, "images lie directly in it"),
        ({"a/x.png": None, "b/readme.txt": "text"}, "b: class folder holds no images"),
        ({"only/x.png": None}, "single class"),
    ],
)
def test_unusable_folders(tmp_path: Path, layout: dict[str, str | None], message: str) -> None:
    root = tmp_path / "data"
    root.mkdir()
    for rel, text in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            Image.new("L", (8, 8)).save(root / rel)
        else:
            (root / rel).write_text(text)
    with pytest.raises(UserError, match=message):
        load_dataset(f"imagefolder:{root}")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("imagefolder:/no/such/dir", "no such directory"),
        ("/no/such/dir", "no such directory"),
        ("npz:/no/such/file.npz", "no such file"),
        ("mnist", "unknown dataset 'mnist'"),
        ("", "empty"),
    ],
)
def test_missing_paths_and_unknown_specs(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_dataset(spec)


# --- npz ----------------------------------------------------------------------------------------


def test_npz_grayscale_color_and_class_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 10, 10), dtype=np.uint8)
    y = np.array([5, 7] * 6)
    np.savez(tmp_path / "gray.npz", x=x, y=y)
    gray = load_dataset(f"npz:{tmp_path / 'gray.npz'}")
    assert gray.images.shape == (12, 1, 10, 10) and gray.class_names == ["5", "7"]
    assert gray.labels.tolist() == [0, 1] * 6
    assert torch.equal(gray.images[:, 0], torch.from_numpy(x))

    # N×H×W×C, non-square (centre-cropped), with class names.
    rgb = rng.integers(0, 256, size=(6, 8, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x=rgb, y=np.array([0, 1, 2] * 2), classes=np.array(["r", "g", "b"]))
    color = load_dataset(f"npz:{tmp_path / 'rgb.npz'}")
    assert color.images.shape == (6, 3, 8, 8) and color.class_names == ["r", "g", "b"]
    assert torch.equal(color.images[0], torch.from_numpy(rgb[0, :, 2:10, :].transpose(2, 0, 1).copy()))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.array([0, 1, 0])}, "4 images but y has 3 labels"),
        ({"x": np.zeros((4, 8, 8), np.float32), "y": np.array([0, 1, 0, 1])}, "x must be uint8"),
        ({"x": np.zeros((4, 64), np.uint8), "y": np.array([0, 1, 0, 1])}, "x must be N×H×W"),
        ({"x": np.zeros((4, 8, 8, 65), np.uint8), "y": np.array([0, 1, 0, 1])}, "C from 1 to 64"),
        ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.array([0.0, 1, 0, 1])}, "y must be a 1-D integer"),
        ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(4, int)}, "single class"),
        ({"images": np.zeros((4, 8, 8), np.uint8)}, "missing array"),
    ],
)
def test_bad_npz(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(UserError, match=message):
        load_dataset(f"npz:{path}")


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.zeros((2, 4, 4), np.uint8), y=np.array([{"a": 1}, {"b": 2}], dtype=object))
    with pytest.raises(UserError, match="pickled Python objects"):
        load_dataset(f"npz:{path}")


def test_npz_that_is_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"junk" * 10)
    with pytest.raises(UserError, match="not an .npz archive"):
        load_dataset(f"npz:{path}")


# --- split, resizing, augmentation ---------------------------------------------------------------


def test_split_is_stratified_deterministic_and_disjoint() -> None:
    dataset = load_dataset("digits")
    split = split_dataset(dataset, val_fraction=0.2, seed=0)
    again = split_dataset(dataset, val_fraction=0.2, seed=0)
    other = split_dataset(dataset, val_fraction=0.2, seed=1)
    assert torch.equal(split.val_indices, again.val_indices) and split.mean == again.mean
    assert not torch.equal(split.val_indices, other.val_indices)

    train, val = set(split.train_indices.tolist()), set(split.val_indices.tolist())
    assert not train & val and len(train | val) == 1797
    total = torch.bincount(dataset.labels, minlength=10)
    in_val = torch.bincount(dataset.labels[split.val_indices], minlength=10)
    # Every class holds out round(20%) of its images.
    assert in_val.tolist() == [round(0.2 * int(n)) for n in total]


def test_normalization_statistics_come_from_the_train_split_only() -> None:
    dataset = load_dataset("digits")
    split = split_dataset(dataset, val_fraction=0.25, seed=0)
    train = dataset.images[split.train_indices].double() / 255
    assert split.mean[0] == pytest.approx(float(train.mean()))
    assert split.std[0] == pytest.approx(float(train.std()))
    # Blanking validation images (of a copy: splits are cached per dataset) leaves the statistics unchanged.
    blanked = data.Dataset(
        images=dataset.images.clone(), labels=dataset.labels, class_names=dataset.class_names, spec="copy"
    )
    blanked.images[split.val_indices] = 0
    assert split_dataset(blanked, val_fraction=0.25, seed=0).mean == split.mean


def test_split_rejects_bad_fraction() -> None:
    with pytest.raises(UserError, match="val_fraction"):
        split_dataset(load_dataset("digits"), val_fraction=1.0, seed=0)


def test_resizing_is_antialiased_and_cached_per_resolution() -> None:
    checker = (np.indices((16, 16)).sum(axis=0) % 2 * 255).astype(np.uint8)
    dataset = data.Dataset(
        images=torch.from_numpy(np.stack([checker, 255 - checker]))[:, None],
        labels=torch.tensor([0, 1]),
        class_names=["a", "b"],
        spec="test",
    )
    half = resized_images(dataset, 8)
    assert half.shape == (2, 1, 8, 8) and half.dtype == torch.uint8
    # Antialiasing averages the 1-pixel checkerboard to flat gray (plain subsampling would keep 0/255).
    interior = half[..., 1:-1, 1:-1]
    assert int(interior.max()) - int(interior.min()) <= 2 and int(half.max()) - int(half.min()) <= 10
    assert resized_images(dataset, 8) is half  # cached
    assert resized_images(dataset, 16) is dataset.images
    assert resized_images(dataset, 24).shape == (2, 1, 24, 24)


def test_augmentation_crops_and_flips_deterministically() -> None:
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    first = augment_batch(images, torch.Generator().manual_seed(0))
    again = augment_batch(images, torch.Generator().manual_seed(0))
    assert first.shape == images.shape and torch.equal(first, again)
    outputs = {augment_batch(images, torch.Generator().manual_seed(s))[0, 0].sum().item() for s in range(10)}
    assert len(outputs) > 1  # shifts and flips vary with the seed


# --- bad inputs and size guards -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("synthetic:seed=-1", r"seed=-1 is outside \[0, 4294967295\]"),
        ("synthetic:n=1000000,size=512", r"1,000,000 images of 3×512×512 pixels take 786 GB as uint8"),
    ],
)
def test_synthetic_bad_seed_and_absurd_size_are_one_line_errors(
    spec: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UserError, match=message):
        load_dataset(spec)
    # The CLI turns it into one line on stderr and exit status 2, never a traceback.
    assert main(["data", spec]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "error:" in err


def test_size_guard_compares_with_available_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "available_memory", lambda: 1_000_000_000)
    # 20,000 × 3 × 128 × 128 = 983 MB, more than half of 1 GB.
    with pytest.raises(UserError, match=r"take 983 MB as uint8, more than 50% of the 1 GB of memory available"):
        load_dataset("synthetic:n=20000,size=128")
    # 400 MB is allowed; resizing it up to 4× the pixels is not.
    images = torch.zeros((1000, 1, 8, 8), dtype=torch.uint8)
    small = data.Dataset(images=images, labels=torch.zeros(1000, dtype=torch.int64), class_names=["a", "b"], spec="s")
    monkeypatch.setattr(machine, "available_memory", lambda: 1_000_000)
    with pytest.raises(UserError, match=r"s at 32 px: 1,000 images of 1×32×32 pixels take 1.02 MB"):
        resized_images(small, 32)
    monkeypatch.setattr(machine, "available_memory", lambda: None)  # unknown: no guard
    assert resized_images(small, 32).shape == (1000, 1, 32, 32)


# --- memory: uint8 only, chunked work, shared memory-mapped copies ---------------------------------


def _mapped_file(tensor: torch.Tensor) -> str | None:
    """The file whose memory map holds the tensor's first byte, from /proc/self/maps (None if anonymous)."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if low <= address < high:
            return fields[5].strip() if len(fields) == 6 else None
    return None


linux_only = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")


def test_synthetic_generation_never_holds_float_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak traced memory stays near the uint8 size (the old generator peaked at ~25×)."""
    import tracemalloc

    monkeypatch.setattr(datacache, "CHUNK_BYTES", 2**20)
    uint8_size = 2000 * 3 * 32 * 32
    tracemalloc.start()
    try:
        dataset = load_dataset("synthetic:n=2000,size=32,channels=3")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dataset.images.shape == (2000, 3, 32, 32)
    assert peak < uint8_size + 6 * 2**20, f"peak {peak / 1e6:.1f} MB for {uint8_size / 1e6:.1f} MB of images"


def test_chunking_changes_no_pixel_and_no_statistic(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = "synthetic:n=300,classes=6,size=16,channels=3,seed=2"
    whole = load_dataset(spec)
    whole_split = split_dataset(whole, val_fraction=0.2, seed=0)
    whole_small = resized_images(whole, 7)
    data.clear_dataset_cache()
    monkeypatch.setattr(datacache, "CHUNK_BYTES", 3000)  # a few images per chunk
    chunked = load_dataset(spec)
    assert chunked is not whole and torch.equal(chunked.images, whole.images)
    split = split_dataset(chunked, val_fraction=0.2, seed=0)
    assert split.mean == whole_split.mean and split.std == whole_split.std
    assert torch.equal(resized_images(chunked, 7), whole_small)
    # The exact-integer statistics agree with a float64 computation over the whole train split.
    train = whole.images[whole_split.train_indices].double() / 255
    assert split.mean == pytest.approx(train.mean(dim=(0, 2, 3)).tolist(), rel=1e-12)
    assert split.std == pytest.approx(train.std(dim=(0, 2, 3)).tolist(), rel=1e-12)


def test_split_and_resize_make_no_float_copy_of_the_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils._python_dispatch import TorchDispatchMode

    class FloatImages(TorchDispatchMode):
        """The most images in any 4-D float tensor an operation makes."""

        most = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dim() == 4:
                self.most = max(self.most, int(out.shape[0]))
            return out

    monkeypatch.setattr(datacache, "CHUNK_BYTES", 4 * 3 * 16 * 16 * 50)  # 50 float images per chunk
    dataset = load_dataset("synthetic:n=400,classes=4,size=16,channels=3")
    with FloatImages() as watch:
        split_dataset(dataset, val_fraction=0.2, seed=0)
        resized_images(dataset, 12)
    assert 0 < watch.most <= 50


@linux_only
def test_big_arrays_are_memory_mapped_from_one_shared_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datacache, "SHARE_MIN_BYTES", 0)
    spec = "synthetic:n=200,classes=4,size=16,channels=1"
    first = load_dataset(spec)
    native = _mapped_file(first.images)
    small = _mapped_file(resized_images(first, 12))
    assert native is not None and native.startswith(str(tmp_path / "cache")) and native.endswith(".images.npy")
    assert small is not None and small.endswith(".r12.npy")

    # Another worker (here: this process after forgetting its datasets) maps the same files.
    data.clear_dataset_cache()
    second = load_dataset(spec)
    assert second is not first and _mapped_file(second.images) == native
    assert _mapped_file(resized_images(second, 12)) == small and torch.equal(second.images, first.images)

    # The map is copy-on-write: a stray write changes this process's copy, never the shared file.
    original = second.images[0].clone()
    second.images[0] = 0
    assert torch.equal(torch.from_numpy(np.load(native)[0]), original)
    assert torch.equal(first.images[0], original)


def test_npz_is_cached_as_a_shared_copy_and_a_changed_file_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datacache, "SHARE_MIN_BYTES", 0)
    path = tmp_path / "d.npz"
    x = np.random.default_rng(0).integers(0, 256, size=(20, 6, 6), dtype=np.uint8)
    np.savez(path, x=x, y=np.arange(20) % 2)
    first = load_dataset(f"npz:{path}")
    assert len(list((tmp_path / "cache").glob("npz-*.images.npy"))) == 1
    data.clear_dataset_cache()
    again = load_dataset(f"npz:{path}")
    assert torch.equal(again.images[:, 0], torch.from_numpy(x)) and torch.equal(again.labels, first.labels)

    np.savez(path, x=255 - x, y=np.arange(20) % 2)
    os.utime(path, ns=(1, 1))
    data.clear_dataset_cache()
    changed = load_dataset(f"npz:{path}")
    assert torch.equal(changed.images[:, 0], torch.from_numpy(255 - x))


# --- a damaged cache is rebuilt, never blamed on the dataset -------------------------------------


def _replace(path: Path, content: bytes) -> None:
    """Put a damaged file in place of a cache file, as a new file (a copy gone wrong, a bad disk).

    Not by truncating it in place: this process still maps the old file, and reading a mapped page
    past a truncated end is a SIGBUS. (The cache itself never rewrites a file in place.)
    """
    damaged = path.with_name(path.name + ".damaged")
    damaged.write_bytes(content)
    os.replace(damaged, path)


@pytest.mark.parametrize(
    ("victim", "damage"),
    [
        ("images.npy", b"not an array at all"),
        ("images.npy", None),  # truncated to half
        ("labels.npy", b"\x93NUMPY garbage"),
        ("json", b'{"format": 2, "shape"'),
        ("json", b"PK\x03\x04 looks like a zip"),
    ],
)
def test_damaged_folder_cache_is_rebuilt(tmp_path: Path, victim: str, damage: bytes | None) -> None:
    root = write_folder(tmp_path / "pets")
    cache = tmp_path / "own-cache"
    first = load_dataset(f"imagefolder:{root}", cache_dir=str(cache))
    (target,) = cache.glob(f"imagefolder-*.{victim}")
    _replace(target, damage if damage is not None else target.read_bytes()[: target.stat().st_size // 2])

    data.clear_dataset_cache()
    second = load_dataset(f"imagefolder:{root}", cache_dir=str(cache))
    assert torch.equal(second.images, first.images) and second.class_names == first.class_names
    # Rebuilt: a third load reads a valid entry again.
    data.clear_dataset_cache()
    assert datacache.read_entry(str(cache), target.name.split(".")[0]) is not None


def test_damaged_resized_copy_is_rebuilt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(datacache, "SHARE_MIN_BYTES", 0)
    dataset = load_dataset("synthetic:n=100,classes=2,size=16,channels=1")
    expected = resized_images(dataset, 10).clone()
    (copy,) = (tmp_path / "cache").glob("*.r10.npy")
    _replace(copy, copy.read_bytes()[:200])
    data.clear_dataset_cache()
    assert torch.equal(resized_images(load_dataset("synthetic:n=100,classes=2,size=16,channels=1"), 10), expected)
    assert np.load(copy).shape == (100, 1, 10, 10)


def test_unwritable_cache_directory_still_loads(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "pets")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    dataset = load_dataset(f"imagefolder:{root}", cache_dir=str(blocker / "cache"))
    assert dataset.images.shape == (18, 3, 24, 24)


def test_processes_that_ask_at_once_build_a_shared_copy_once(tmp_path: Path) -> None:
    """While one builder holds the lock, another waits and then maps its file instead of building."""
    import threading

    path = str(tmp_path / "cache" / "x.r4.npy")
    shape = (3, 1, 4, 4)
    built: list[int] = []
    results: list[np.ndarray] = []

    def chunks() -> list[np.ndarray]:
        built.append(1)
        return [np.full(shape, 7, np.uint8)]

    with datacache._build_lock(path):
        waiter = threading.Thread(target=lambda: results.append(datacache.materialize(path, shape, chunks)))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive()  # blocked on the lock
        datacache.write_npy(path, shape, [np.full(shape, 5, np.uint8)])
    waiter.join(10)
    assert built == [] and int(results[0][0, 0, 0, 0]) == 5


def test_npz_takes_the_bands_of_a_multispectral_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "bands.npz"
    np.savez(path, x=rng.integers(0, 256, size=(12, 6, 6, 16), dtype=np.uint8), y=np.arange(12) % 3)
    dataset = load_dataset(f"npz:{path}", cache_dir=str(tmp_path / "cache"))
    assert dataset.in_channels == 16 and dataset.native_size == 6 and dataset.num_classes == 3
    assert dataset.images.shape == (12, 16, 6, 6)
