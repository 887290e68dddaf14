"""`scalesearch report` on a small real run: sections, the validation verdict, and links that resolve."""

import re
import shutil
from pathlib import Path

import pytest

# pytest puts tests/ on sys.path, so the session's shared tiny run is built once for every module.
from test_validate import shared_run

from scalesearch.cli import main

LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def validated(tmp_path_factory) -> Path:
    return shared_run(tmp_path_factory, validated=True)


def test_report_sections_and_links(capsys, validated):
    assert main(["report", str(validated)]) == 0
    assert "report.md" in capsys.readouterr().out
    report = (validated / "report.md").read_text()
    for heading in ("# scalesearch run", "## Coefficients and constraint", "## Search", "## Top 5 trials",
                    "## Frontier and search view", "## Validation", "## The scaled family", "## Files"):  # fmt: skip
        assert heading in report
    assert "(chosen)" in report and "alpha * beta^2 * gamma^2 =" in report
    assert "| phi | compound | best baseline |" in report and "rough estimate" in report
    assert "| B1 |" in report  # the family table
    links = LINK.findall(report)
    assert {"search.png", "validation.png", "validation.csv", "trials.csv"} <= set(links)
    for link in links:  # relative links resolve inside the run folder, images are non-empty
        target = validated / link
        assert target.is_file(), link
        assert target.stat().st_size > 0


def test_report_without_validation_says_how_to_get_it(tmp_path_factory, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(shared_run(tmp_path_factory, validated=False), run_dir)
    assert main(["report", str(run_dir)]) == 0
    report = (run_dir / "report.md").read_text()
    assert "Not run yet. `scalesearch validate RUN_DIR`" in report and "validation.png" not in report


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/no/such/run"], "run folder '/no/such/run' not found"),
        (["{empty}"], "is not a finished search run (no best.json)"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, tmp_path, argv, message):
    (tmp_path / "empty").mkdir()
    status = main(["report", *[a.format(empty=tmp_path / "empty") for a in argv]])
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1
