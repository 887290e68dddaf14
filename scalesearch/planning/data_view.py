"""What the proxy sees: the data given the same resolution headroom the target base has.

The target base (B0 as the user deploys it) runs at `r_base` px on data stored at `native` px: its
headroom is native / r_base. The proxy base runs at `r_p` px. To have the same headroom, every proxy
sees the images first resized to

    n_p = r_p × native / r_base     (never above native: resizing cannot add information)

and then resampled to its own resolution. A candidate above n_p is then upsampling at the proxy exactly
where its full-scale variant upsamples at the target, and a cue finer than the target base can see is
invisible to the proxy base too. Without this the proxy is starved (12 px of 24-px data, 12-24 px of
256-px photos) and every search answers "give back the pixels the proxy threw away".

`r_base` is `--base-resolution`, else the space's `search: base_resolution:` when the data is the
space's own `search: dataset` (the two describe one set-up), else the space's `base: resolution` (the
target base's own, 224 px for EfficientNet-B0). `off` turns the mapping off: the proxy resamples the
stored images directly (n_p = native), as scalesearch did before this mapping existed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from scalesearch.config.settings import OFF, parse_base_resolution
from scalesearch.config.spaces import SearchSpace

# The target base sees at most this many times the data's pixels per side, or at least this fraction of
# them, before the tool says so: 224 px for 24-px images (9.3x upsampling) is an artifact of the set-up.
UPSAMPLING_NOTE = 2.0
DOWNSAMPLING_NOTE = 4.0


@dataclass(frozen=True)
class DataView:
    """How a search's proxies see its data (recorded in manifest.json, best.json and the report)."""

    native: int  # side of the stored (decoded) images, px
    base_resolution: int | None  # r_base: the target base's resolution; None when the mapping is off
    proxy_resolution: int  # r_p: the proxy base's resolution
    size: int  # n_p: the side every proxy's images are resized to first (native when off)
    source: str  # where r_base came from

    @property
    def resize(self) -> int | None:
        """The side training resizes to before each candidate's resolution; None: straight from native."""
        return None if self.size >= self.native else self.size

    @property
    def headroom(self) -> float | None:
        """native / r_base: the data's pixels per target-base pixel (None when the mapping is off)."""
        return None if self.base_resolution is None else self.native / self.base_resolution

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "headroom": self.headroom}

    def describe(self) -> str:
        """One line: what the proxy saw and why."""
        if self.base_resolution is None:
            return (
                f"data: {self.native} px; the resolution mapping is off ({self.source}): every proxy resamples the "
                f"stored {self.native}-px images directly (the proxy base at {self.proxy_resolution} px)"
            )
        return (
            f"data: {self.native} px; the target base runs at {self.base_resolution} px ({self.source}), headroom "
            f"{self.headroom:.2f}; so the proxy base at {self.proxy_resolution} px sees the images resized to "
            f"{self.size} px first (n_p = {self.proxy_resolution} x {self.native} / {self.base_resolution}"
            f"{', capped at native' if self.base_resolution < self.proxy_resolution else ''}),"
            f" and a proxy above {self.size} px is upsampling, as its full-scale variant above {self.native} px is"
        )

    def note(self) -> str | None:
        """One line when r_base is far from the data's native size (the answer would reflect the set-up)."""
        if self.base_resolution is None:
            return None
        if self.base_resolution > UPSAMPLING_NOTE * self.native:
            return (
                f"note: the target base runs at {self.base_resolution} px but the data is {self.native} px: B0 and "
                f"every variant upsample {self.base_resolution / self.native:.1f}x, and the proxies see the images "
                f"at {self.size} px; pass --base-resolution with the resolution you deploy B0 at (say "
                f"{self.native}), or --base-resolution off"
            )
        if self.native > DOWNSAMPLING_NOTE * self.base_resolution:
            return (
                f"note: the data is {self.native} px and the target base runs at {self.base_resolution} px: B0 sees "
                f"1/{(self.native / self.base_resolution) ** 2:.0f} of the pixels, so resolution has much to gain; "
                "pass --base-resolution if you deploy B0 at another size"
            )
        return None


def data_view(space: SearchSpace, native: int, setting: int | str | None, *, dataset: str | None = None) -> DataView:
    """How the proxies of `space` see data of side `native` under the setting (None: the space's).

    The space's `search: base_resolution` describes its own `search: dataset`: it applies only when
    `dataset` is that one; any other dataset gets the space's base resolution (and the note, if far).
    """
    setting, source = parse_base_resolution(setting), "--base-resolution"
    own_data = dataset is not None and dataset == space.search.get("dataset", "digits")
    if setting is None and own_data and space.search.get("base_resolution") is not None:
        where = f"{space.path}: search: base_resolution"
        setting, source = parse_base_resolution(space.search["base_resolution"], what=where), where
    if setting is None:
        setting, source = space.base.resolution, f"{space.name}'s base resolution"
    r_p = space.proxy.resolution
    if setting == OFF:
        return DataView(native, None, r_p, native, "base_resolution: off")
    base = int(setting)
    size = min(native, max(1, round(r_p * native / base)))
    return DataView(native, base, r_p, size, source)
