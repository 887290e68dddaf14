"""`scalesearch data` and `scalesearch train` end to end, including one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scalesearch.cli import main
from scalesearch.data import datasets as data

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


SPACE = str(Path(__file__).resolve().parents[1] / "fixtures" / "tiny_space.yaml")


def test_train_json_plans_the_coefficients_on_the_realizable_set(capsys: pytest.CaptureFixture[str]) -> None:
    from scalesearch.config.spaces import load_space
    from scalesearch.core.scaling import Coefficients
    from scalesearch.planning.planner import realizable_set, requested_shares

    argv = ["train", "--space", SPACE, "--dataset", TINY, "--alpha", "1.2", "--beta", "1.1"]
    argv += ["--gamma", "1.15", "--epochs", "2", "--seed", "1", "--threads", "1", "--format", "json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]
    assert 0.0 <= result["final_val_accuracy"] <= 1.0
    assert result["recipe"]["epochs"] == 2 and result["seed"] == 1 and result["device"] == "cpu"
    assert result["model"]["num_classes"] == 3 and result["model"]["in_channels"] == 1
    # What a search proposing these coefficients trains: the nearest realizable network at phi 1.
    space = load_space(SPACE)
    asked = requested_shares(Coefficients(1.2, 1.1, 1.15), space.target)
    nearest = realizable_set(space, num_classes=3, in_channels=1, phi=1.0).nearest(asked)
    assert result["network"] == nearest.key
    assert (result["params"], result["flops"]) == (nearest.params, nearest.flops)
    assert result["model"]["width_mult"] == nearest.spec.width_mult
    assert result["requested_shares"] == pytest.approx(vars(asked))
    assert result["share_error"] == pytest.approx(max(abs(result["requested_shares"][k] - result["realized_shares"][k])
                                                      for k in ("depth", "width", "resolution")))  # fmt: skip
    assert abs(result["constraint_ratio"] / 2 - 1) <= space.tolerance


def test_train_recipe_flags_change_the_recipe_trained_with(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--space", SPACE, "--dataset", TINY, "--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15"]
    argv += ["--epochs", "1", "--threads", "1", "--format", "json", "--recipe", "init=official", "--recipe", "lr=0.05"]
    assert main(argv) == 0
    recipe = json.loads(capsys.readouterr().out)["recipe"]
    assert (recipe["init"], recipe["lr"]) == ("official", 0.05)


def test_train_from_a_run_keeps_the_runs_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _hand_made_run(tmp_path / "run")
    message = _error(["train", "--from", str(tmp_path / "run"), "--recipe", "init=zero"], capsys)
    assert "--from trains with the run's own recipe; drop --recipe" in message


def test_train_table_at_phi_0_is_the_proxy_base(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--space", SPACE, "--dataset", TINY, "--alpha", "1", "--beta", "1"]
    argv += ["--gamma", "1", "--phi", "0", "--epochs", "1", "--threads", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "width x0.25, depth x0.5, 12 px" in out and "share error" not in out
    assert "epoch  train_loss  val_loss  val_acc" in out
    assert "final val accuracy:" in out and "params:" in out and "FLOPs:" in out


def _hand_made_run(root: Path, *, seed: int = 3) -> tuple[Path, dict]:
    """A finished run folder of the tiny space on TINY data whose trial 0 is a realizable network
    (its accuracy is made up: only what is trained is checked against it)."""
    from scalesearch.config.settings import SearchSettings
    from scalesearch.config.spaces import load_space
    from scalesearch.outputs import runs
    from scalesearch.planning.planner import realizable_set

    space = load_space(SPACE)
    network = realizable_set(space, num_classes=3, in_channels=1, phi=1.0).networks[0]
    settings = SearchSettings(space_path=SPACE, dataset=TINY, epochs=1, recipe=dict(space.recipe), out=str(root))
    runs.start(root, settings)
    row = {"trial": 0, "stage": "search", "round": 0, "status": "completed", "seed": seed, **network.row(space.target),
           "final_val_accuracy": 0.5, "val_accuracies": "0.5", "epochs_run": 1}  # fmt: skip
    runs.write_trials(root / runs.TRIALS, {0: row})
    runs.write_json(root / runs.BEST, {"alpha": row["alpha"], "beta": row["beta"], "gamma": row["gamma"], "trial": 0})
    return root, row


def test_train_from_a_run_trains_the_trials_network(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, row = _hand_made_run(tmp_path / "run")
    assert main(["train", "--from", str(run_dir), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["network"] == row["network"]
    assert (result["params"], result["flops"]) == (row["params"], row["flops"])
    model = result["model"]
    assert (model["width_mult"], model["depth_mult"], model["resolution"]) == (
        row["width_mult"], row["depth_mult"], row["resolution"],
    )  # fmt: skip
    assert result["seed"] == 3 and result["recipe"]["epochs"] == 1 and result["threads"] == 1
    assert result["from"]["trial"] == 0 and len(result["epochs"]) == 1
    # The space no longer builds the row's network: one line, nothing trained.
    from scalesearch.outputs import runs

    runs.write_trials(run_dir / runs.TRIALS, {0: {**row, "width_mult": row["width_mult"] * 1.5}})
    message = _error(["train", "--from", str(run_dir)], capsys)
    assert f"trial 0's network {row['network']}" in message and "no longer builds" in message


@pytest.mark.slow
def test_train_from_a_search_run_reproduces_its_trial(tmp_path_factory, capsys: pytest.CaptureFixture[str]) -> None:
    from test_validate import shared_run

    from scalesearch.outputs.runs import read_run

    run = read_run(shared_run(tmp_path_factory, validated=False))
    capsys.readouterr()  # the search's own output, when this test made the run
    number = run.best["trial"]
    row = run.trials()[number]
    assert main(["train", "--from", str(run.path), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["network"] == row["network"] and result["seed"] == row["seed"]
    assert (result["params"], result["flops"]) == (row["params"], row["flops"])
    # CPU training is deterministic: the trial's seed gives the trial's accuracy, epoch by epoch.
    assert [e["val_accuracy"] for e in result["epochs"]] == [float(v) for v in row["val_accuracies"].split(";")]
    assert result["final_val_accuracy"] == row["final_val_accuracy"]


def test_train_on_a_folder_with_a_bad_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _folder(tmp_path / "insects")
    argv = ["train", "--space", SPACE, "--dataset", str(root), "--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15"]
    argv += ["--epochs", "1", "--threads", "1", "--format", "json"]
    assert "bad.jpg" in _error(argv, capsys)
    assert main([*argv, "--skip-bad-images"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "skipped 1 unreadable image file(s)" in captured.err and result["skipped_files"] == 1
    assert result["model"]["num_classes"] == 2 and result["model"]["in_channels"] == 3
    assert len(result["epochs"]) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--alpha", "-1"], "--alpha must be a positive number"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--dataset", "npz:/no/such.npz"], "no such file"),
        (["--threads", "0"], "--threads"),
        (["--device", "tpu"], "--device"),
        (["--constraint", "energy"], "unknown constraint 'energy'"),
        (["--trial", "2"], "--trial needs --from RUN_DIR"),
        (["--from", "/no/such/run"], "--from trains the run's own network on the run's data; drop --space"),
        (["--recipe", "init=xavier"], "recipe.init: expected one of official, fan_in, zero"),
        (["--recipe", "lr"], "--recipe 'lr': expected KEY=VALUE"),
    ],
)
def test_train_bad_inputs(extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--space", SPACE, "--dataset", TINY]
    argv += ["--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15", *extra]
    assert message in _error(argv, capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--alpha", "1.2"], "say what to train: --from RUN_DIR, or --alpha, --beta and --gamma (missing: --beta"),
        (["--from", "/no/such/run"], "run folder '/no/such/run' not found"),
        (["--from", "{run}", "--trial", "7"], "has no finished trial 7 (trials: 0..0)"),
        (["--alpha", "1", "--beta", "1", "--gamma", "1", "--space", SPACE], "coefficients of all 1 ask for no scaling"),
    ],
)
def test_train_what_to_train(tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    if "{run}" in argv:
        _hand_made_run(tmp_path / "run")
    argv = [a.format(run=tmp_path / "run") for a in argv]
    assert message in _error(["train", "--dataset", TINY, *argv] if "--from" not in argv else ["train", *argv], capsys)
