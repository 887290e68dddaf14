"""`scalesearch family`: JSON schema, formats, --from, and one-line errors with exit status 2."""

import json
import subprocess
import sys
import time

import pytest

from scalesearch.cli import main

PAPER = ["--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15"]


def run_cli(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_json_output_matches_the_schema(capsys):
    status, out, _ = run_cli(capsys, "family", *PAPER, "--phis", "0,1,2.5", "--num-classes", "10", "--format", "json")
    assert status == 0
    family = json.loads(out)
    assert family["rule"] == "compound, calibrated"
    assert family["coefficients"]["alpha"] == 1.2
    assert family["coefficients"]["product"] == pytest.approx(1.92, abs=1e-3)
    assert "multiply-add" in family["flops_convention"]
    names = [v["name"] for v in family["variants"]]
    assert names == ["B0", "B1", "B2.5"]
    for variant in family["variants"]:
        for key in (
            "name",
            "phi",
            "depth_mult",
            "width_mult",
            "resolution",
            "dropout",
            "stages",
            "params",
            "flops",
        ):
            assert key in variant
        assert all({"channels", "repeats"} <= set(stage) for stage in variant["stages"])
    b0, b1, b25 = family["variants"]
    assert b0["flops_ratio"] == 1.0 and b0["theoretical_ratio"] == 1.0
    assert b0["flops"] < b1["flops"] < b25["flops"]
    assert b1["rule"] == {"depth_mult": 1.2, "width_mult": 1.1, "resolution": 256}  # the pure rule, recorded
    assert abs(b1["flops_ratio"] / 2 - 1) <= 0.05 and b1["target_ratio"] == 2  # calibrated onto its budget
    assert b1["theoretical_ratio"] == pytest.approx(1.92, abs=1e-3)


def test_pure_rule_is_the_formula_as_written(capsys):
    status, out, _ = run_cli(capsys, "family", *PAPER, "--phis", "0,1", "--pure-rule", "--format", "json")
    family = json.loads(out)
    assert status == 0 and family["rule"] == "compound"
    b1 = family["variants"][1]
    assert b1["resolution"] == 256 and b1["depth_mult"] == pytest.approx(1.2) and not b1["calibrated"]
    assert b1["flops_ratio"] > 2.1  # rounding repeats up and pixels to 4 overshoots 2x (the paper's footnote)


def test_reference_json_has_null_coefficients_and_published_counts(capsys):
    status, out, _ = run_cli(capsys, "family", "--reference", "--phis", "0,1", "--format", "json")
    family = json.loads(out)
    assert status == 0 and family["coefficients"] is None and family["rule"] == "reference"
    assert [v["params"] for v in family["variants"]] == [5_288_548, 7_794_184]


@pytest.mark.parametrize("fmt", ["table", "markdown", "yaml"])
def test_other_formats_and_out_file(capsys, tmp_path, fmt):
    out_file = tmp_path / f"family.{fmt}"
    status, _, _ = run_cli(capsys, "family", *PAPER, "--phis", "0-1", "--format", fmt, "--out", str(out_file))
    assert status == 0
    text = out_file.read_text()
    assert "B1" in text and "1.2" in text


def test_from_run_dir_reads_best_json(capsys, tmp_path):
    (tmp_path / "best.json").write_text(
        json.dumps({"alpha": 1.4, "beta": 1.1, "gamma": 1.1, "space": "efficientnet_b0"})
    )
    status, out, _ = run_cli(capsys, "family", "--from", str(tmp_path), "--phis", "1", "--format", "json")
    assert status == 0
    assert json.loads(out)["variants"][0]["rule"]["depth_mult"] == pytest.approx(1.4)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--alpha", "0.9", "--beta", "1.2", "--gamma", "1.3"], "alpha must be"),
        (["--alpha", "1.5", "--beta", "1.2", "--gamma", "1.2"], "outside 2"),
        ([*PAPER, "--phis", "0,-1"], "phi must be"),
        (["--alpha", "1.2"], "give --alpha, --beta and --gamma"),
        (["--reference", "--phis", "9"], "reference table has variants 0-7"),
        (["--space", "/no/such/space.yaml", *PAPER], "not found"),
        (["--from", "/no/such/run"], "best.json not found"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, argv, message):
    status, out, err = run_cli(capsys, "family", *argv)
    assert status == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_yaml_with_python_tag_via_subprocess(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("family: !!python/object/apply:os.system ['echo pwned']\n")
    proc = subprocess.run(
        [sys.executable, "-m", "scalesearch.cli", "family", "--space", str(evil), *PAPER],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "refusing a YAML tag" in proc.stderr and "Traceback" not in proc.stderr
    assert "pwned" not in proc.stdout


def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys, scalesearch.cli as c; c.build_parser(); "
        "print(sorted(m for m in ('torch', 'ray', 'optuna', 'matplotlib', 'fvcore') if m in sys.modules))"
    )
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
    assert time.perf_counter() - start < 5  # generous: a cold interpreter on a loaded machine


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "/"], "is a folder"),
        (["--out", "/proc/no/such/file.json"], "cannot write --out"),
        (["--phis", "0,40"], "needs about"),  # refused with the estimate, in seconds, not killed at 24 GB
    ],
)
def test_unwritable_out_and_absurd_phi_are_one_line(capsys, argv, message):
    status = main(["family", "--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15", "--phis", "0", *argv])
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1
