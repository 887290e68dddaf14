"""`scalesearch export` on a small real run: every format, a module that runs without scalesearch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scalesearch.cli import main

MULTIPLIER_KEYS = ("name", "phi", "depth_mult", "width_mult", "resolution", "dropout", "stages")


@pytest.fixture
def run_dir(tiny_grid_run) -> Path:
    """The session's finished tiny grid run (tests/conftest.py), which export only reads."""
    return tiny_grid_run


def export(capsys, run_dir: Path, fmt: str) -> str:
    status = main(["export", str(run_dir), "--format", fmt])
    out, err = capsys.readouterr()
    assert status == 0, err
    return out


def test_json_holds_the_rule_and_family(capsys, run_dir):
    data = json.loads(export(capsys, run_dir, "json"))
    best = json.loads((run_dir / "best.json").read_text())
    family = json.loads((run_dir / "family.json").read_text())
    assert data["rule"] == "compound, calibrated" and "alpha^phi" in data["rule_description"]
    c = data["coefficients"]
    assert (c["alpha"], c["beta"], c["gamma"]) == (best["alpha"], best["beta"], best["gamma"])
    assert data["source"]["trial"] == best["trial"] and data["source"]["dataset"] == "digits"
    # The family's B0 runs at r_base: the tiny space deploys it at the digits' own 8 px.
    assert data["base"]["resolution"] == family["base_resolution"] == 8 and data["base"]["channel_divisor"] == 8
    assert [v["upsampling"] for v in data["variants"]] == [v["resolution"] > 8 for v in family["variants"]]
    assert data["variants"][0]["check"] == "base" and data["evidence"]["data_native_px"] == 8
    assert [{k: v[k] for k in MULTIPLIER_KEYS} for v in data["variants"]] == [
        {k: v[k] for k in MULTIPLIER_KEYS} for v in family["variants"]
    ]


def test_yaml_states_the_rule_and_parses(capsys, run_dir):
    text = export(capsys, run_dir, "yaml")
    assert text.startswith("# rule: compound formula, alpha=")
    assert yaml.safe_load(text)["variants"][1]["name"] == "B1"


def test_python_module_runs_without_scalesearch_and_reproduces_family_json(run_dir, tmp_path):
    module = tmp_path / "exported_family.py"
    assert main(["export", str(run_dir), "--format", "python", "--out", str(module)]) == 0
    text = module.read_text()
    assert "rule: compound formula" in text and "import scalesearch" not in text
    # -I: isolated from the environment and the current folder; -S: no site-packages, so scalesearch
    # (installed there) cannot be imported; cwd elsewhere so the repository is not on the path either.
    script = "import json, exported_family as m; print(json.dumps([m.scaled_config(p) for p in (0, 1, 2.5)]))"
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r}); {script}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    b0, b1, b25 = json.loads(done.stdout)
    family = json.loads((run_dir / "family.json").read_text())
    for got, expected in zip((b0, b1), family["variants"]):
        assert {k: got[k] for k in MULTIPLIER_KEYS} == {k: expected[k] for k in MULTIPLIER_KEYS}
    # A φ the run did not measure: the pure compound formula.
    c = family["coefficients"]
    assert b25["name"] == "B2.5" and b25["dropout"] == 0.3
    assert b25["width_mult"] == pytest.approx(c["beta"] ** 2.5, abs=1e-6)
    assert b25["depth_mult"] == pytest.approx(c["alpha"] ** 2.5, abs=1e-6)


@pytest.mark.parametrize(("fmt", "width_key", "depth_key"), [("timm", "channel_multiplier", "depth_multiplier"),
                                                              ("torchvision", "width_mult", "depth_mult")])  # fmt: skip
def test_library_arguments(capsys, run_dir, fmt, width_key, depth_key):
    text = export(capsys, run_dir, fmt)
    assert "# rule: compound formula" in text and "usage:" in text
    assert "is not EfficientNet-B0" in text  # the tiny space has three stages: say so
    data = yaml.safe_load(text)
    family = json.loads((run_dir / "family.json").read_text())
    for variant, expected in zip(data["variants"], family["variants"]):
        arguments = variant["kwargs"] if fmt == "timm" else variant["conf_kwargs"]
        assert arguments[width_key] == expected["width_mult"] and arguments[depth_key] == expected["depth_mult"]
        resolution = variant["input_size"][1] if fmt == "timm" else variant["resolution"]
        assert resolution == expected["resolution"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{run}", "--format", "onnx"], "unknown export format 'onnx'"),
        (["{empty}"], "is not a finished search run (no best.json)"),
        (["/no/such/run"], "run folder '/no/such/run' not found"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, tmp_path, run_dir, argv, message):
    (tmp_path / "empty").mkdir()
    status = main(["export", *[a.format(run=run_dir, empty=tmp_path / "empty") for a in argv]])
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1


def test_python_module_runs_whatever_the_run_path_holds(capsys, tmp_path):
    """A path with a backslash escape or triple quotes must not break the module's docstring."""
    import shutil

    odd = tmp_path / 'odd\\N{x}"""run'
    shutil.copytree(Path(__file__).resolve().parents[1] / "fixtures" / "run_tiny", odd)
    module = tmp_path / "rule.py"
    module.write_text(export(capsys, odd, "python"))
    result = subprocess.run([sys.executable, str(module)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
