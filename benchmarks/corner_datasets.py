"""Generated corner datasets: one per dimension (width, depth) and one interior, with probe tables.

The default set and texture24 are resolution-critical known answers. These generators are attempts at
the other corners and at an interior answer, built for the proxy of `search_spaces/efficientnet_b0.yaml`
(B0 blocks at width 0.15, depth 0.5, 12 px, one stride of 2) at the search's phi = 2. Each npz is stored
at the size the proxy base should see with B0 deployed at 12 px (`--base-resolution 12`, so n_p =
native): 12 px where no information may lie above the proxy's view (width, depth), 24 px where one cue
needs resolution headroom (interior). Above 12 px a 12 px set is only upsampled. `npz:` sets train with
the loader's default augmentation (random 1/8 crop and horizontal flip), so every label here is
invariant to a left-right flip and to a 1 px shift.

Datasets (all deterministic by `seed`; N = 1600 unless said, balanced classes):

* ``width_spectral`` (12 px, 16 bands, 16 classes, N = 4800): **the width-critical known answer.**
  Class c is one of 16 orthonormal 16-band signatures; an image is one spectrum, 3.5 x its class's
  signature plus a per-image nuisance spectrum (unit normal in every band), repeated over all pixels
  under pixel noise 0.3 (the multispectral pixels of one material under varying illumination). Nothing
  varies in space beyond noise, so resolution adds no information and there is nothing for depth's extra
  layers to combine; the class lies in all 16 bands, and a network keeps only as many linear views of
  them as its first stages have channels (the proxy base: 6 in the stem, 4 in stage 1; the width corner
  at phi 2: 10 and 6; depth and resolution keep the base's). Nearest class mean on the best k views of
  the spectrum: 0.50 (k = 4), 0.61 (6), 0.84 (10), 0.94 (16). 4,800 images (75 SGD steps per epoch) so
  that the proxies are limited by what they can represent rather than by how far 4 epochs get them.
* ``width_palette`` (12 px, RGB, 24 classes). A palette of 12 colours at least 0.35 apart in RGB; class
  c is a distinct set of 4 of them, and every pixel is independently one colour of its class's set,
  times a per-image gain (0.85-1.15), plus pixel noise 0.06. The label is a colour histogram: no spatial
  structure (no receptive field needed, so depth has nothing to add), no information above 12 px, and
  telling 12 colours apart in 3-D through the proxy's 2-channel first stage is the intended capacity
  (width) bottleneck.
* ``width_templates`` (12 px, RGB, 32 classes). Class c is a fixed random mirror-symmetric colour
  template (independent uniform values per pixel and channel); an image is its template at contrast
  0.15-0.25 under noise 0.11. Matched filtering against 32 unrelated templates is meant to need many
  feature detectors (width), not receptive field (the whole image is the template).
* ``depth_xor`` (12 px, grey, 2 classes). A 3x3 bar ('|' or '-') in each corner; the label is whether
  the two TOP bars differ (XOR, symmetric, so flip-invariant); the bottom bars are distractors. The
  label needs a unit that combines the two top corners, ~8 px apart, non-linearly before the global
  pooling: the intended depth cue.
* ``depth_samediff`` (12 px, grey, 2 classes). Two 3x3 marks (one of six, a mirror-closed set) at random
  positions at least 6 px apart; label = same mark or not. The same intended cue, positions random.
* ``interior_texture_palette`` (24 px, RGB, 24 classes = 4 textures x 6 colour sets). Each 2x2 block is
  one colour of the class's 3-colour set (of a 10-colour palette), modulated by a period-2 texture
  (h-stripes, v-stripes, checkerboard, flat; random phase). At 12 px the texture averages away (the
  resolution-headroom cue) while the colour set survives (the intended capacity cue).
* ``interior_period3``: the same with period-3 textures (values 0, 0.5, 1), which partly survive from
  about 15-17 px, so a point with resolution share near 0.5 (17 px at phi 2) can see them.
* ``interior_reach_spectral`` (24 px, 16 bands, 32 classes): width_spectral's spectrum behind
  depth_reach's marks, for the plain CNN; the third interior attempt (won by the width corner).
* ``interior_stripes_spectral`` (34 px, 13 bands, 24 classes, N = 4800): **the interior known answer**,
  for the plain CNN space (`benchmarks/spaces/plain_cnn.yaml`, base 8 channels, 3 layers, 24 px) with B0
  deployed at 24 px, so n_p = 34: the proxies see the stored images, the base a 24 px copy. Label =
  (signature, stripes or not). Width: 12 bands hold one of 12 orthonormal signatures under a per-image
  nuisance spectrum (as width_spectral), constant over the image, so a network keeps as many linear
  views of them as its first layer has channels: the base 8, 12 (all of them) from width share 0.5.
  Resolution: a 13th, panchromatic band holds one-pixel stripes (contrast 3, pixel noise 0.3) or none.
  They are clean only at the stored 34 px; any other size resamples them (antialiased bilinear) into a
  moire whose contrast and phase vary across the image (a quick test measures the alternation: 60 grey
  levels at 34 px, 6-28 at 24-48 px). The one network at 34 px on the budget band at phi 2 has 12
  channels: shares 0 / 0.49 / 0.51. That a 4-epoch proxy learns the clean stripes and not the moire is
  what the probes measured (not a construction): 0.84 and 0.81 there against at most 0.45 at the other
  probed points; the exhaustive truth (results/known-answer/interior/truth) ties it with a 36 px
  network that learns the moire on some seeds (0.17 / 0.26 / 0.57): an interior answer either way.

What the probes of the other sets showed (results/known-answer/corners/README.md, made with the official
classifier init, the default before `init: fan_in`): none of those width or depth designs makes its
corner win (4 epochs, batch 64: 80 SGD steps). The depth corner is the worst point on every set; the
width corner is within the seed spread of the base or below it; on the 12 px
sets the resolution corner (an upsampled copy) scores highest. Resolution is not neutral on a 12 px set:
the proxy downsamples by 2 inside, so an upsampled input buys spatial positions (4 channels x 12 x 12
after the stride against 4 x 6 x 6) for the FLOPs that width spends on 2x the channels. Both interior
attempts are won by the resolution corner: the colour cue needs no capacity beyond the base. Treat
width_palette, width_templates, depth_xor and depth_samediff as documented failures, not known answers.

    python benchmarks/corner_datasets.py --out DIR                                  # write the npz files
    python benchmarks/corner_datasets.py --out DIR --which width_palette --probe --seeds 0,1,2
    python benchmarks/corner_datasets.py --out DIR --which interior_period3 --probe --points resolution,width+resolution
    python benchmarks/corner_datasets.py --out DIR --summarize DIR/probes.csv       # table + shares

`--probe` trains each point (base at phi 0; the depth, width and resolution corners and the balanced
point (1/3, 1/3, 1/3) at phi 2; optionally the edge midpoints width+resolution and depth+resolution),
each the realizable network `scalesearch train` picks for those coefficients, i.e. what the search would
train, with the space's default recipe (`--init` changes its init) and 4 epochs, one thread, one training
at a time, appending to DIR/probes.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)


def _palette(rng: np.random.Generator, count: int, min_dist: float = 0.35) -> np.ndarray:
    """`count` RGB colours in [0.1, 0.9]^3 at least `min_dist` apart (rejection sampling)."""
    colours: list[np.ndarray] = []
    while len(colours) < count:
        c = rng.uniform(0.1, 0.9, size=3)
        if all(np.linalg.norm(c - o) >= min_dist for o in colours):
            colours.append(c)
    return np.array(colours)


def width_palette(
    n: int = 1600,
    size: int = 12,
    classes: int = 24,
    colours: int = 12,
    per_class: int = 4,
    noise: float = 0.06,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Class = a set of `per_class` colours out of a palette; every pixel independently one of them."""
    rng = np.random.default_rng(seed)
    palette = _palette(rng, colours)
    subsets: list[tuple[int, ...]] = []
    while len(subsets) < classes:
        s = tuple(sorted(rng.choice(colours, size=per_class, replace=False).tolist()))
        if s not in subsets:
            subsets.append(s)
    sets = np.array(subsets)
    labels = rng.permutation(np.arange(n) % classes)
    pick = rng.integers(0, per_class, size=(n, size, size))
    index = sets[labels][np.arange(n)[:, None, None], pick]
    img = palette[index]  # N×S×S×3
    gain = rng.uniform(0.85, 1.15, size=(n, 1, 1, 1))
    img = img * gain + rng.normal(0, noise, size=img.shape)
    return _to_uint8(img), labels.astype(np.int64)


# 3×3 binary marks, closed under left-right mirroring (augmentation flips images).
_MARKS = np.array(
    [
        [[0, 1, 0], [0, 1, 0], [0, 1, 0]],  # |
        [[0, 0, 0], [1, 1, 1], [0, 0, 0]],  # -
        [[0, 1, 0], [1, 1, 1], [0, 1, 0]],  # +
        [[1, 0, 1], [0, 1, 0], [1, 0, 1]],  # x
        [[1, 1, 1], [1, 0, 1], [1, 1, 1]],  # o
        [[1, 0, 1], [1, 0, 1], [1, 1, 1]],  # u
    ],
    dtype=float,
)


def depth_samediff(n: int = 1600, size: int = 12, noise: float = 0.15, min_dist: int = 6, seed: int = 0):
    """Two 3×3 marks far apart; label 1 when they are the same mark, 0 when different."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2)
    img = np.zeros((n, size, size))
    k = len(_MARKS)
    for i in range(n):
        a = rng.integers(k)
        b = a if labels[i] == 1 else (a + rng.integers(1, k)) % k
        while True:
            p = rng.integers(1, size - 4, size=2)
            q = rng.integers(1, size - 4, size=2)
            if np.abs(p - q).max() >= min_dist:
                break
        img[i, p[0] : p[0] + 3, p[1] : p[1] + 3] = _MARKS[a]
        img[i, q[0] : q[0] + 3, q[1] : q[1] + 3] = _MARKS[b]
    base = rng.uniform(0.2, 0.4, size=(n, 1, 1))
    contrast = rng.uniform(0.35, 0.55, size=(n, 1, 1))
    out = base + contrast * img + rng.normal(0, noise, size=img.shape)
    return _to_uint8(out), labels.astype(np.int64)


def width_templates(n: int = 1600, size: int = 12, classes: int = 32, noise: float = 0.45, seed: int = 0):
    """Class = a fixed random mirror-symmetric colour template; images are it under heavy noise."""
    rng = np.random.default_rng(seed)
    half = rng.uniform(-1, 1, size=(classes, size, size // 2, 3))
    templates = np.concatenate([half, half[:, :, ::-1]], axis=2)
    labels = rng.permutation(np.arange(n) % classes)
    contrast = rng.uniform(0.15, 0.25, size=(n, 1, 1, 1))
    img = 0.5 + contrast * templates[labels] + rng.normal(0, noise * 0.25, size=(n, size, size, 3))
    return _to_uint8(img), labels.astype(np.int64)


def depth_xor(n: int = 1600, size: int = 12, noise: float = 0.15, seed: int = 0):
    """A bar in each corner; label = whether the two TOP bars differ (XOR); bottom bars are distractors."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, size=(n, 4))
    labels = bits[:, 0] ^ bits[:, 1]
    img = np.zeros((n, size, size))
    corners = [(1, 1), (1, size - 4), (size - 4, 1), (size - 4, size - 4)]
    for i in range(n):
        for c, (r0, c0) in enumerate(corners):
            img[i, r0 : r0 + 3, c0 : c0 + 3] = _MARKS[bits[i, c]]
    base = rng.uniform(0.2, 0.4, size=(n, 1, 1))
    contrast = rng.uniform(0.35, 0.55, size=(n, 1, 1))
    out = base + contrast * img + rng.normal(0, noise, size=img.shape)
    return _to_uint8(out), labels.astype(np.int64)


def interior_texture_palette(
    n: int = 1600,
    size: int = 24,
    textures: int = 4,
    sets: int = 6,
    colours: int = 10,
    per_set: int = 3,
    noise: float = 0.06,
    seed: int = 0,
    period: int = 2,
):
    """Label = (period-2 texture, colour set): the texture is only visible above 12 px, the colour set
    (one colour per 2x2 block, so it survives 12 px) is the capacity cue."""
    rng = np.random.default_rng(seed)
    palette = _palette(rng, colours)
    subsets: list[tuple[int, ...]] = []
    while len(subsets) < sets:
        s = tuple(sorted(rng.choice(colours, size=per_set, replace=False).tolist()))
        if s not in subsets:
            subsets.append(s)
    labels = rng.permutation(np.arange(n) % (textures * sets))
    tex, cset = labels // sets, labels % sets
    half = size // 2
    pick = rng.integers(0, per_set, size=(n, half, half))
    colour = palette[np.array(subsets)[cset][np.arange(n)[:, None, None], pick]]
    colour = colour.repeat(2, axis=1).repeat(2, axis=2)  # N×S×S×3, constant on 2×2 blocks
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    phase = rng.integers(0, period, size=(n, 1, 1))
    step = 1.0 / (period - 1)  # stripes of values 0, ..., 1 over one period, mean 0.5
    patterns = np.stack(
        [
            (rows[None] + phase) % period * step,
            (cols[None] + phase) % period * step,
            (rows[None] + cols[None] + phase) % period * step,
            np.full((n, size, size), 0.5),
        ]
    )
    fine = patterns[tex, np.arange(n)][..., None]
    contrast = rng.uniform(0.25, 0.4, size=(n, 1, 1, 1))
    img = colour * (1 + contrast * (2 * fine - 1)) + rng.normal(0, noise, size=colour.shape)
    return _to_uint8(img), labels.astype(np.int64)


def interior_period3(n: int = 1600, seed: int = 0):
    """``interior_texture_palette`` with period-3 textures: visible from about 16 px (a resolution share
    near 0.5 at phi 2 trains 17 px), so an interior point can see the texture and spend the rest."""
    return interior_texture_palette(n=n, seed=seed, period=3)


def width_spectral(
    n: int = 4800,
    size: int = 12,
    bands: int = 16,
    classes: int = 16,
    snr: float = 3.5,
    pixel: float = 0.3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Class = one of `classes` orthonormal spectral signatures in `bands` channels, under a per-image
    nuisance spectrum; the width-critical known answer (see the module docstring)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(bands, bands)))
    signatures = basis[:classes]
    labels = rng.permutation(np.arange(n) % classes)
    spectra = snr * signatures[labels] + rng.normal(size=(n, bands))  # one spectrum per image
    img = spectra[:, None, None, :] + pixel * rng.normal(size=(n, size, size, bands))
    return np.clip(128 + 28 * img, 0, 255).astype(np.uint8), labels.astype(np.int64)


def _add_two_marks(rng: np.random.Generator, image: np.ndarray, near: float, far: float, *, same: bool,
                   strength: float) -> None:  # fmt: skip
    """Two 3x3 marks of ±`strength` (every channel), `near`-`far` px apart in a random direction, added to
    an S×S(×C) image in place; the same sign when `same`. Centres stay 3 px inside the image, so a 1/8
    crop (3 px at 24) keeps both marks whole."""
    low, high = 3, image.shape[0] - 4
    while True:
        angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(near, far)
        first = rng.uniform(low, high, size=2)
        second = first + distance * np.array([np.cos(angle), np.sin(angle)])
        if low <= second.min() and second.max() <= high:
            break
    sign = rng.choice([-strength, strength])
    for centre, value in ((first, sign), (second, sign if same else -sign)):
        r, c = np.round(centre).astype(int)
        image[r - 1 : r + 2, c - 1 : c + 2] += value


def depth_reach(
    n: int = 4800, size: int = 24, near: float = 10.0, far: float = 16.0, noise: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Two 3x3 marks, each bright or dark, `near`-`far` px apart in a random direction; label = the same
    polarity or not: the depth-critical known answer for the plain CNN space (see the module docstring)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2)
    img = rng.normal(0.0, noise, size=(n, size, size))
    for i in range(n):
        _add_two_marks(rng, img[i], near, far, same=labels[i] == 1, strength=1.0)
    return _to_uint8(0.5 + 0.4 * img), labels.astype(np.int64)


def interior_reach_spectral(
    n: int = 4800,
    size: int = 24,
    bands: int = 16,
    classes: int = 16,
    snr: float = 3.5,
    near: float = 6.0,
    far: float = 9.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """width_spectral's spectrum behind depth_reach's two marks (6-9 px apart, in every band): label =
    (signature, same polarity or not), 2 x `classes` classes. For the plain CNN: reading the spectrum needs
    channels (width), the relation needs a reach of about 13 px (6 layers: depth)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(bands, bands)))
    labels = rng.permutation(np.arange(n) % (2 * classes))
    signature, same = labels // 2, labels % 2
    spectra = snr * basis[:classes][signature] + rng.normal(size=(n, bands))
    img = spectra[:, None, None, :] + 0.3 * rng.normal(size=(n, size, size, bands))
    for i in range(n):
        _add_two_marks(rng, img[i], near, far, same=same[i] == 1, strength=4.0)
    return np.clip(128 + 20 * img, 0, 255).astype(np.uint8), labels.astype(np.int64)


def interior_stripes_spectral(
    n: int = 4800,
    size: int = 34,
    bands: int = 12,
    snr: float = 3.0,
    contrast: float = 3.0,
    pixel: float = 0.3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """width_spectral's spectrum (12 signatures in 12 bands: reading it needs 12 channels) and a 13th,
    panchromatic band that holds one-pixel stripes or not (seen whole only at the stored 34 px): label =
    (signature, stripes or not), 24 classes; the interior known answer (see the module docstring)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(bands, bands)))
    labels = rng.permutation(np.arange(n) % (2 * bands))
    signature, striped = labels // 2, labels % 2
    spectra = snr * basis[signature] + rng.normal(size=(n, bands))
    cols = np.arange(size)[None, :].repeat(size, axis=0)
    pattern = np.where(cols % 2 == 0, 1.0, -1.0)  # one-pixel stripes: a shift or a flip only changes its sign
    fine = contrast * striped[:, None, None] * pattern[None] * rng.choice([-1.0, 1.0], size=(n, 1, 1))
    img = np.concatenate([np.broadcast_to(spectra[:, None, None, :], (n, size, size, bands)), fine[..., None]], -1)
    img = img + pixel * rng.normal(size=img.shape)
    return np.clip(128 + 20 * img, 0, 255).astype(np.uint8), labels.astype(np.int64)


GENERATORS = {
    "width_spectral": width_spectral,
    "depth_reach": depth_reach,
    "width_palette": width_palette,
    "width_templates": width_templates,
    "depth_xor": depth_xor,
    "depth_samediff": depth_samediff,
    "interior_texture_palette": interior_texture_palette,
    "interior_period3": interior_period3,
    "interior_reach_spectral": interior_reach_spectral,
    "interior_stripes_spectral": interior_stripes_spectral,
}
INTENDED = {
    "width_spectral": "width",
    "depth_reach": "depth",
    "width_palette": "width",
    "width_templates": "width",
    "depth_xor": "depth",
    "depth_samediff": "depth",
    "interior_texture_palette": "interior",
    "interior_period3": "interior",
    "interior_reach_spectral": "interior",
    "interior_stripes_spectral": "interior",
}

# The points probed: name -> (alpha, beta, gamma, phi). At phi 2 the coefficients ask for shares
# (log alpha, 2 log beta, 2 log gamma) / log 2: the corners and the centre of the simplex.
POINTS = {
    "base": (1.0, 1.0, 1.0, 0.0),
    "depth": (2.0, 1.0, 1.0, 2.0),
    "width": (1.0, 2**0.5, 1.0, 2.0),
    "resolution": (1.0, 1.0, 2**0.5, 2.0),
    "balanced": (2 ** (1 / 3), 2 ** (1 / 6), 2 ** (1 / 6), 2.0),
    # Edge midpoints, not probed by default: (0, 1/2, 1/2) and (1/2, 0, 1/2).
    "width+resolution": (1.0, 2**0.25, 2**0.25, 2.0),
    "depth+resolution": (2**0.5, 1.0, 2**0.25, 2.0),
    "depth+width": (2**0.5, 2**0.25, 1.0, 2.0),
}
DEFAULT_POINTS = "base,depth,width,resolution,balanced"
HEADER = ["dataset", "init", "point", "seed", "d", "w", "r", "res", "acc_epochs", "final", "best", "seconds"]


# The space each set is probed (and searched) in, and the resolution its target base is deployed at:
# the EfficientNet sets with B0 at 12 px (headroom 1 for the 12 px sets, 2 for the 24 px interior ones),
# the plain CNN sets with their base at 24 px (headroom 1 for depth_reach, 34 / 24 for the stripes). The
# proxies see the stored images (n_p = r_p x native / r_base = native), the proxy base its own size.
PLAIN_CNN = ROOT / "benchmarks" / "spaces" / "plain_cnn.yaml"
PLAIN_SETS = ("depth_reach", "interior_reach_spectral", "interior_stripes_spectral")
SPACES = {name: (str(PLAIN_CNN), 24) for name in PLAIN_SETS}
DEFAULT_SPACE = ("efficientnet_b0", 12)


def train(dataset: Path, point: str, seed: int, epochs: int, init: str) -> dict:
    """`scalesearch train` of one point in a subprocess (1 thread); its JSON plus the wall time."""
    alpha, beta, gamma, phi = POINTS[point]
    space, base_resolution = SPACES.get(dataset.stem, DEFAULT_SPACE)
    cmd = [sys.executable, "-m", "scalesearch", "train", "--space", space, "--dataset", f"npz:{dataset}",
           "--alpha", str(alpha), "--beta", str(beta), "--gamma", str(gamma), "--phi", str(phi),
           "--epochs", str(epochs), "--seed", str(seed), "--threads", "1", "--format", "json",
           "--base-resolution", str(base_resolution), "--recipe", f"init={init}"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout)
    result["wall"] = time.perf_counter() - start
    return result


def shares(d: float, w: float, r: float) -> tuple[float, float, float]:
    """Realized shares (log d, 2 log w, 2 log r) normalised; (0, 0, 0) for the base."""
    logs = np.log([d, w * w, r * r])
    total = logs.sum()
    return tuple(float(x) for x in (logs / total)) if total > 1e-9 else (0.0, 0.0, 0.0)


def summarize(raw: Path, out: Path) -> None:
    """probes.csv with realized shares added, and summary.md: mean ± std of final accuracy per point."""
    with raw.open() as handle:
        rows = list(csv.DictReader(handle))
    fields = ["dataset", "init", "point", "seed", "share_depth", "share_width", "share_resolution", "d", "w", "r",
              "resolution_px", "val_accuracy_per_epoch", "final_val_accuracy", "best_val_accuracy",
              "seconds"]  # fmt: skip
    table = []
    for row in rows:
        sd, sw, sr = shares(float(row["d"]), float(row["w"]), float(row["r"]))
        # Rows from before the recipe's init existed were trained with the official init.
        table.append({"dataset": row["dataset"], "init": row.get("init") or "official", "point": row["point"],
                      "seed": int(row["seed"]),
                      "share_depth": round(sd, 3), "share_width": round(sw, 3), "share_resolution": round(sr, 3),
                      "d": row["d"], "w": row["w"], "r": row["r"], "resolution_px": row["res"],
                      "val_accuracy_per_epoch": row["acc_epochs"], "final_val_accuracy": row["final"],
                      "best_val_accuracy": row["best"], "seconds": row["seconds"]})  # fmt: skip
    table.sort(key=lambda t: (list(GENERATORS).index(t["dataset"]), t["init"], list(POINTS).index(t["point"]),
                              t["seed"]))  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    with (out / "probes.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)
    lines = ["| dataset | init | point | shares d/w/r | px | seeds | final val acc (mean ± std) | epoch 2 | s/run |",
             "|---|---|---|---|---:|---:|---|---:|---:|"]  # fmt: skip
    for name, init, point in ((n, i, p) for n in GENERATORS for i in ("official", "fan_in", "zero") for p in POINTS):
        group = [t for t in table if t["dataset"] == name and t["init"] == init and t["point"] == point]
        if not group:
            continue
        acc = np.array([float(t["final_val_accuracy"]) for t in group])
        ep2 = np.mean([float(t["val_accuracy_per_epoch"].split("/")[1]) for t in group])
        std = f"{acc.std(ddof=1):.3f}" if len(acc) > 1 else "n/a"
        g = group[0]
        seconds = np.mean([float(t["seconds"]) for t in group])
        where = f"{g['share_depth']:.2f}/{g['share_width']:.2f}/{g['share_resolution']:.2f}"
        lines.append(f"| {name} | {init} | {point} | {where} | {g['resolution_px']} | {len(acc)}"
                     f" | {acc.mean():.3f} ± {std} | {ep2:.3f} | {seconds:.0f} |")  # fmt: skip
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def run_search(dataset: Path, out: Path, seed: int, *extra: str) -> dict:
    """The default search (`scalesearch search` with its space's `search:` defaults; `extra` flags on top)
    on a set, in the set's space and at its base resolution; resumed if unfinished; returns best.json."""
    space, base_resolution = SPACES.get(dataset.stem, DEFAULT_SPACE)
    command = [sys.executable, "-m", "scalesearch", "search", "--space", space, "--dataset", f"npz:{dataset}",
               "--base-resolution", str(base_resolution), "--seed", str(seed), "--out", str(out), "--quiet",
               *extra]  # fmt: skip
    if not (out / "best.json").is_file():
        subprocess.run(command + (["--resume"] if (out / "search.json").is_file() else []), check=True)
    return json.loads((out / "best.json").read_text())


SEARCH_COLUMNS = ["dataset", "intended", "seed", "network", "share_depth", "share_width", "share_resolution",
                  "intended_share", "mean_accuracy", "std", "seeds", "distinguishable", "tied_networks",
                  "tie_region_intended_min", "next_best_untied_mean"]  # fmt: skip


def search_row(name: str, seed: int, best: dict) -> dict:
    """One line of searches.csv: what the default search chose on a set, and the intended dimension's share."""
    shares, intended = best["shares"], INTENDED[name]
    confirm = best["confirm"]
    candidates = confirm["candidates"]
    untied = [c["mean"] for c in candidates if not c["tied"]]
    return {"dataset": name, "intended": intended, "seed": seed, "network": best["network"],
            "share_depth": round(shares["depth"], 3), "share_width": round(shares["width"], 3),
            "share_resolution": round(shares["resolution"], 3),
            # An interior set has no single intended dimension: its largest share says how interior it is.
            "intended_share": round(shares[intended] if intended in shares else max(shares.values()), 3),
            "mean_accuracy": round(best["value"], 4), "std": round(best["std"] or 0.0, 4), "seeds": best["seeds"],
            "distinguishable": confirm["distinguishable"], "tied_networks": sum(c["tied"] for c in candidates),
            "tie_region_intended_min": round(confirm["tie_region"][intended][0], 3) if intended in shares else "",
            "next_best_untied_mean": round(max(untied), 4) if untied else ""}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the npz files (and probes.csv)")
    parser.add_argument("--which", default=",".join(GENERATORS), help="comma-separated dataset names")
    parser.add_argument("--probe", action="store_true", help="train the probe points, append to OUT/probes.csv")
    parser.add_argument("--points", default=DEFAULT_POINTS)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--init", default="fan_in", help="the recipe's init: official, fan_in (default) or zero")
    parser.add_argument("--summarize", metavar="RAW_CSV", help="only write OUT/probes.csv + OUT/summary.md from it")
    parser.add_argument("--search", action="store_true",
                        help="the default search on each set, --seeds (OUT/seedK); OUT/searches.csv")  # fmt: skip
    args = parser.parse_args()
    out = Path(args.out)
    if args.summarize:
        summarize(Path(args.summarize), out)
        return
    out.mkdir(parents=True, exist_ok=True)
    names = args.which.split(",")
    for name in names:
        x, y = GENERATORS[name]()
        np.savez(out / f"{name}.npz", x=x, y=y)
        print(name, x.shape, f"{len(np.unique(y))} classes", flush=True)
    if args.search:
        rows = []
        for name in names:
            for seed in (int(s) for s in args.seeds.split(",")):
                best = run_search(out / f"{name}.npz", out / f"seed{seed}", seed)
                rows.append(search_row(name, seed, best))
                print(*rows[-1].values(), flush=True)
        with (out / "searches.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=SEARCH_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    if not args.probe:
        return
    path = out / "probes.csv"
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(HEADER)
        for name in names:
            for seed in (int(s) for s in args.seeds.split(",")):
                for point in args.points.split(","):
                    r = train(out / f"{name}.npz", point, seed, args.epochs, args.init)
                    accs = [round(e["val_accuracy"], 3) for e in r["epochs"]]
                    realized = (round(r["realized"][k], 3) for k in ("depth", "width", "resolution"))
                    row = [name, args.init, point, seed, *realized,
                           r["model"]["resolution"], "/".join(map(str, accs)), round(r["final_val_accuracy"], 4),
                           round(r["best_val_accuracy"], 4), round(r["wall"], 1)]  # fmt: skip
                    writer.writerow(row)
                    handle.flush()
                    print(*row, flush=True)


if __name__ == "__main__":
    main()
