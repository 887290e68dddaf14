"""What the proxy sees (planning.data_view): the data with the target base's headroom, n_p = r_p × native / r_base."""

from __future__ import annotations

import pytest
import torch

from scalesearch.config.settings import parse_base_resolution
from scalesearch.config.spaces import load_space
from scalesearch.core.errors import UserError
from scalesearch.data.datasets import Dataset
from scalesearch.data.prep import resized_images
from scalesearch.planning.data_view import data_view


@pytest.fixture(scope="module")
def space():
    return load_space("efficientnet_b0")  # proxy base at 12 px, target base at 224 px


def test_the_proxy_gets_the_target_bases_headroom(space) -> None:
    # 48-px data, B0 deployed at 24 px: headroom 2, so the 12-px proxy base sees 24-px images.
    view = data_view(space, 48, 24)
    assert (view.native, view.base_resolution, view.proxy_resolution, view.size) == (48, 24, 12, 24)
    assert view.headroom == 2.0 and view.resize == 24
    # The same content stored at 24 px with B0 at 12 px (the same fraction of native): the same view.
    assert data_view(space, 24, 12).size == 24 and data_view(space, 24, 12).resize is None
    # Photos of 448 px, B0 at 224 (the paper's set-up, about 2x): the proxy sees 24 px.
    assert data_view(space, 448, 224).size == 24


def test_no_pixels_are_invented_and_off_keeps_the_stored_images(space) -> None:
    # B0 deployed below the proxy's own resolution: n_p would exceed native; capped at native.
    assert data_view(space, 24, 6).size == 24 and "capped at native" in data_view(space, 24, 6).describe()
    assert "capped" not in data_view(space, 48, 24).describe()
    off = data_view(space, 24, "off")
    assert off.base_resolution is None and off.size == 24 and off.resize is None and off.note() is None
    assert "mapping is off" in off.describe()


def test_the_space_default_is_its_base_resolution_and_far_settings_are_said(space) -> None:
    view = data_view(space, 24, None)  # 224-px B0 on 24-px data
    assert view.base_resolution == 224 and view.size == 1
    note = view.note()
    assert note is not None and "224 px" in note and "24 px" in note and "--base-resolution" in note
    assert data_view(space, 24, 24).note() is None
    assert data_view(space, 48, 24).note() is None
    assert "1/100" in (data_view(space, 2400, 240).note() or "")  # B0 keeps 1 pixel in 100
    line = data_view(space, 48, 24).describe()
    assert "48 px" in line and "24 px" in line and "n_p = 12 x 48 / 24" in line


def test_the_spaces_base_resolution_goes_with_its_own_dataset(space) -> None:
    own = space.search["dataset"]
    assert space.search["base_resolution"] == 12
    view = data_view(space, 24, None, dataset=own)
    assert (view.base_resolution, view.size) == (12, 24) and own in (view.source + own)
    # Another dataset is not what the space's line describes: the target base's own 224 px (and a note).
    other = data_view(space, 24, None, dataset="digits")
    assert other.base_resolution == 224 and other.note() is not None
    assert data_view(space, 24, 48, dataset=own).base_resolution == 48  # the flag wins


@pytest.mark.parametrize("bad", [0, -3, "abc", 1.5, True, 20000])
def test_bad_base_resolutions_are_one_line(bad) -> None:
    with pytest.raises(UserError, match="base-resolution"):
        parse_base_resolution(bad)
    assert parse_base_resolution("32") == 32 and parse_base_resolution("off") == "off"


def test_training_images_are_resized_to_the_view_first() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 1, 48, 48), dtype=torch.uint8, generator=generator)
    dataset = Dataset(images=images, labels=torch.arange(6) % 2, class_names=["a", "b"], spec="hand")
    direct = resized_images(dataset, 36)
    through = resized_images(dataset, 36, view=24)
    assert through.shape == direct.shape == (6, 1, 36, 36)
    # Through the 24-px view, 36 px is an upsampling of the 24-px copy: exactly that, and not the direct copy.
    assert torch.equal(through, resized_images(Dataset(images=resized_images(dataset, 24), labels=dataset.labels,
                                                       class_names=dataset.class_names, spec="v"), 36))  # fmt: skip
    assert not torch.equal(through, direct)
    # At the view itself, the view's copy; a view at or above native changes nothing; copies are cached.
    assert torch.equal(resized_images(dataset, 24, view=24), resized_images(dataset, 24))
    assert torch.equal(resized_images(dataset, 36, view=48), direct)
    assert resized_images(dataset, 36, view=24) is through
