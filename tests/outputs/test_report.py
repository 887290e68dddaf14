"""`scalesearch report` on a small real run (tests/fixtures/run_tiny): the tables it is built from, its order
(answer first, the validation frontier as the first figure), honesty about ties, and links that resolve."""

import json
import re
import shutil
from pathlib import Path

import pytest

from scalesearch.cli import main
from scalesearch.outputs import runs
from scalesearch.outputs.report import certainty_note, confirm_rows, family_rows, search_rows
from scalesearch.outputs.views import trials_frame

RUN_TINY = Path(__file__).resolve().parents[1] / "fixtures" / "run_tiny"
LINK = re.compile(r"\]\(([^)\s]+)\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A writable copy of the tiny run, validated (the report writes into the folder)."""
    return Path(shutil.copytree(RUN_TINY, tmp_path / "run_tiny"))


def best_json() -> dict:
    return json.loads((RUN_TINY / runs.BEST).read_text())


def test_confirm_rows_follow_best_json():
    rows = confirm_rows(best_json())
    assert [r["network"] for r in rows] == ["`91b3340fd0` (chosen)", "`ababc0c11d`"]
    assert rows[0] == {
        "network": "`91b3340fd0` (chosen)",
        "shares d / w / r": "0.80 / 0.20 / 0.00",
        "FLOPs": "244,840",
        "n": "2",
        "seeds": "0, 1",
        "mean ± std": "0.9708 ± 0.0059",
        "tied with chosen": "yes",
    }
    assert rows[1]["seeds"] == "0, 0, 0" and rows[1]["tied with chosen"] == "yes"


def test_search_rows_say_how_the_search_went():
    run = runs.read_run(RUN_TINY)
    rows = dict(search_rows(run, trials_frame(run.trials())))
    assert rows["trials"] == "6 search (4 completed, 2 stopped) + 1 confirm (1 completed)"
    assert rows["distinct networks trained in the search"] == "4 of 13 realizable on the budget band"
    assert rows["share error (requested → trained, largest share difference)"] == "median 0.192, max 0.238"
    assert rows["coverage of the simplex"].startswith("0.320: ")
    assert rows["budget band"] == "2× the base FLOPs ± 10%"


def test_family_rows_compare_measured_and_target_ratios():
    family = json.loads((RUN_TINY / runs.FAMILY_JSON).read_text())
    rows = family_rows(family)
    assert [r["name"] for r in rows] == [v["name"] for v in family["variants"]]
    b1 = rows[1]
    assert (b1["target ratio"], b1["measured ratio"], b1["off target"]) == ("2", "1.960", "-2.0%")
    assert b1["rule: depth / width / res"] == "1.746 / 1.070 / 224" and b1["calibrated"] == "yes"


def test_certainty_note_is_plain_about_ties():
    best = best_json()
    assert "cannot tell the 2 tied candidates apart" in certainty_note(best)
    sure = {**best, "confirm": {**best["confirm"], "distinguishable": True}}
    assert certainty_note(sure) == ""
    unknown = {**best, "confirm": {**best["confirm"], "pooled_std": None, "distinguishable": False}}
    assert "is unknown" in certainty_note(unknown)


def test_report_leads_with_the_answer_and_the_validation_frontier(capsys, run_dir):
    assert main(["report", str(run_dir)]) == 0
    assert "report.md" in capsys.readouterr().out
    report = (run_dir / "report.md").read_text()
    headings = ["# scalesearch run", "## The answer", "## Confirmed candidates", "## How the search went",
                "## Validation", "## The search's views", "## The scaled family", "## Files"]  # fmt: skip
    positions = [report.index(h) for h in headings]
    assert positions == sorted(positions)
    answer = report[positions[1] : positions[2]]
    best = best_json()
    assert f"alpha = {best['alpha']:.4f}, beta = {best['beta']:.4f}, gamma = {best['gamma']:.4f}" in answer
    assert best["verdict"] in answer and "cannot tell the 2 tied candidates apart" in answer
    assert "**Validation** (compound vs the best single-dimension rule at equal FLOPs): phi 1: width better" in answer
    assert "| `91b3340fd0` (chosen) | 0.80 / 0.20 / 0.00 |" in report
    assert "| phi | compound | best baseline |" in report and "rough estimate" in report
    assert "| B1 | 1 |" in report  # the family table
    images = IMAGE.findall(report)
    assert images == [runs.VALIDATION_CSV.replace(".csv", ".png"), runs.SEARCH_PNG, runs.FRONTIER_PNG]
    links = LINK.findall(report)
    assert {"trials.csv", "best.json", "validation.csv"} <= set(links)
    for link in links:  # relative links resolve inside the run folder, images are non-empty
        target = run_dir / link
        assert target.is_file(), link
        assert target.stat().st_size > 0


def test_report_without_validation_says_so_and_how_to_get_it(run_dir):
    (run_dir / runs.VALIDATION_CSV).unlink()
    assert main(["report", str(run_dir)]) == 0
    report = (run_dir / "report.md").read_text()
    assert "**Validation was not run**" in report and "    scalesearch validate RUN_DIR\n" in report
    assert "**Validation:** not run" in report.split("## Confirmed candidates")[0]
    assert "validation.png" not in report and IMAGE.findall(report)[0] == runs.SEARCH_PNG


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/no/such/run"], "run folder '/no/such/run' not found"),
        (["{empty}"], "is not a finished search run (no best.json)"),
        (["{run}", "--out", "/tmp/elsewhere.md"], "must be a file inside"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, tmp_path, argv, message):
    (tmp_path / "empty").mkdir()
    status = main(["report", *[a.format(empty=tmp_path / "empty", run=RUN_TINY) for a in argv]])
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1
