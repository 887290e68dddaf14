"""`scalesearch data` and `scalesearch train` end to end, including one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scalesearch import data
from scalesearch.cli import main

TINY = "synthetic:n=120,classes=3,size=8,channels=1"


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALESEARCH_CACHE", str(tmp_path / "cache"))
    data.clear_dataset_cache()


def _folder(root: Path) -> Path:
    """Two classes of small images, one of them corrupt."""
    for name in ("ants", "bees"):
        (root / name).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (12, 12), (i * 40, 10, 200)).save(root / name / f"{i}.png")
    (root / "bees" / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


def test_commands_import_nothing_heavy() -> None:
    code = "import sys, scalesearch.commands.data, scalesearch.commands.train; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_data_prints_classes_sizes_and_split(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "digits"]) == 0
    out = capsys.readouterr().out
    assert "images: 1,797  classes: 10  native size: 8×8  channels: 1" in out
    assert "split: train 1,438 / val 359" in out
    assert "skipped files: 0" in out
    assert out.count("\n") > 12  # one row per class


def test_data_json_with_skipped_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _folder(tmp_path / "insects")
    assert main(["data", str(root), "--skip-bad-images", "--format", "json", "--val-fraction", "0.4"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [c["class"] for c in info["classes"]] == ["ants", "bees"]
    assert [c["images"] for c in info["classes"]] == [5, 5]
    assert info["native_size"] == 12 and info["channels"] == 3
    assert info["split"] == {"train": 6, "val": 4, "val_fraction": 0.4, "seed": 0}
    assert len(info["skipped"]) == 1 and "bad.jpg" in info["skipped"][0]


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run a command that must fail with exit status 2 and one line on stderr; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_data_bad_inputs_end_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no such directory" in _error(["data", "imagefolder:" + str(tmp_path / "missing")], capsys)
    (tmp_path / "empty").mkdir()
    assert "no class sub-folders" in _error(["data", str(tmp_path / "empty")], capsys)
    root = _folder(tmp_path / "insects")
    assert "bad.jpg" in _error(["data", str(root)], capsys)
    np.savez(tmp_path / "pickled.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.array([None, 1], dtype=object))
    assert "pickled" in _error(["data", f"npz:{tmp_path / 'pickled.npz'}"], capsys)
    assert "val_fraction" in _error(["data", "digits", "--val-fraction", "1.5"], capsys)


def test_train_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--space", "efficientnet_b0", "--dataset", TINY, "--alpha", "1.2", "--beta", "1.1"]
    argv += ["--gamma", "1.15", "--epochs", "2", "--seed", "1", "--threads", "1", "--format", "json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]
    assert 0.0 <= result["final_val_accuracy"] <= 1.0
    assert result["params"] > 0 and result["flops"] > 0
    assert result["recipe"]["epochs"] == 2 and result["seed"] == 1 and result["device"] == "cpu"
    assert result["model"]["num_classes"] == 3 and result["model"]["in_channels"] == 1


def test_train_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--space", "efficientnet_b0", "--dataset", TINY, "--alpha", "1", "--beta", "1"]
    argv += ["--gamma", "1", "--phi", "0", "--epochs", "1", "--threads", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "epoch  train_loss  val_loss  val_acc" in out
    assert "final val accuracy:" in out and "params:" in out and "FLOPs:" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--alpha", "-1"], "--alpha must be a positive number"),
        (["--epochs", "0"], "epochs"),
        (["--dataset", "npz:/no/such.npz"], "no such file"),
        (["--threads", "0"], "--threads"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_train_bad_inputs(extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--space", "efficientnet_b0", "--dataset", TINY]
    argv += ["--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15", *extra]
    assert message in _error(argv, capsys)
