"""`scalesearch family --costs`: activations, latency and training memory per variant."""

import json
from pathlib import Path

from scalesearch.cli import main

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_space.yaml"


def test_family_costs_json_and_table(tmp_path, capsys):
    # The tiny space with a 32 px target base, so measuring two variants takes about a second.
    space = tmp_path / "tiny32.yaml"
    space.write_text(TINY.read_text().replace("resolution: 224", "resolution: 32"))
    common = ["family", "--space", str(space), "--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15", "--phis", "0,1",
              "--num-classes", "10", "--threads", "1", "--costs"]  # fmt: skip
    assert main([*common, "--format", "json", "--out", str(tmp_path / "family.json")]) == 0
    family = json.loads((tmp_path / "family.json").read_text())
    assert [v["name"] for v in family["variants"]] == ["B0", "B1"]
    for variant in family["variants"]:
        for key in ("activations", "latency_batch1_s", "latency_throughput_s", "peak_train_memory_bytes"):
            assert variant[key] > 0, key
        assert variant["throughput_batch"] == 8 and variant["memory_batch"] == 2 and variant["cost_device"] == "cpu"
    small, big = family["variants"]
    assert big["activations"] > small["activations"]
    assert big["peak_train_memory_bytes"] > small["peak_train_memory_bytes"]
    assert set(family["cost_conventions"]) == {"activations", "latency", "memory"}
    assert "1 torch thread(s)" in family["cost_conventions"]["latency"]
    assert main([*common, "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert "latency_ms" in table and "train_memory_mb" in table
    # Without --costs nothing is measured beyond params and FLOPs.
    assert main([*common[:-1], "--format", "json", "--out", str(tmp_path / "plain.json")]) == 0
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert "latency_batch1_s" not in plain["variants"][0] and "cost_conventions" not in plain
