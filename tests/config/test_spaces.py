"""Search-space files: the shipped one loads; bad files fail with one clear message."""

from pathlib import Path

import pytest

from scalesearch.config.spaces import load_space, space_from_text
from scalesearch.core.errors import UserError
from scalesearch.core.scaling import Coefficients


def test_shipped_space_loads_by_name():
    space = load_space("efficientnet_b0")
    assert space.family_name == "efficientnet"
    assert space.target == 2.0 and space.tolerance == 0.05
    assert space.base.resolution == 224
    assert space.proxy.resolution < space.base.resolution


def test_scaled_spec_rounds_resolution_and_raises_dropout():
    space = load_space("efficientnet_b0")
    spec = space.scaled_spec(Coefficients(1.2, 1.1, 1.15), 1)
    assert (spec.depth_mult, spec.width_mult, spec.resolution) == pytest.approx((1.2, 1.1, 256))
    assert [space.base.dropout.at(phi) for phi in range(8)] == [0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.5, 0.5]


def write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("family: efficientnet\narchitecture: [1, 2\n", "malformed YAML at line"),
        ("!!python/object/apply:os.system ['echo hi']\n", "refusing a YAML tag"),
        ("family: mystery\n", "unknown model family 'mystery'"),
        ("family: efficientnet\nbogus: 1\n", "unknown top-level keys"),
        ("", "empty"),
        (
            "family: efficientnet\narchitecture: {stem_channels: 32, head_channels: 1280, stages: []}\n",
            "non-empty",
        ),
        (
            "family: efficientnet\narchitecture: {stem_channels: 32, head_channels: 1280,"
            " stages: [{expand: 1, kernel: 3, stride: 1, channels: -16, repeats: 1}]}\n",
            "'channels' must be a positive integer",
        ),
        ("family: efficientnet\nconstraint: {target: 0.5}\n", "constraint.target"),
    ],
)
def test_bad_space_files_fail_with_one_clear_line(tmp_path, text, message):
    with pytest.raises(UserError, match=message) as info:
        load_space(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_missing_space_file():
    with pytest.raises(UserError, match="not found"):
        load_space("/nonexistent/space.yaml")


def test_space_from_text_is_the_space_without_its_file():
    """A worker on another machine rebuilds the space from its text (the file exists only on the driver)."""
    space = load_space("efficientnet_b0")
    again = space_from_text(space.source, path="/elsewhere/efficientnet_b0.yaml")
    assert again.name == space.name and again.path == "/elsewhere/efficientnet_b0.yaml"
    assert (again.base, again.proxy, again.reference, again.search, again.recipe) == (
        space.base,
        space.proxy,
        space.reference,
        space.search,
        space.recipe,
    )
    assert space.builder is None and space.builder_module() is None


def test_a_checkout_reads_its_own_search_spaces_folder(monkeypatch):
    """Run from a source tree (here, or a worktree on PYTHONPATH), the shipped spaces are that tree's."""
    from scalesearch.config import spaces

    monkeypatch.delenv(spaces.SPACES_ENV, raising=False)
    tree = Path(spaces.__file__).resolve().parents[2]
    assert spaces.spaces_dir() == tree / "search_spaces"
