"""`posfeed demo`, README's first command, as a user runs it: a real process, from any folder."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.run_commands import currency_lines

REPORTS_DOC = Path(__file__).resolve().parents[1] / "docs" / "REPORTS.md"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("POSFEED_", "ANTAVO_"))}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """One `posfeed demo --keep DIR --json` and one in text, from a folder of their own."""
    where = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "demo", "--keep", str(where / "demo"), "--json"],
        cwd=where, env=_env(), capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = subprocess.run(
        [sys.executable, "-m", "pipeline", "demo", "--keep", str(where / "demo-text")],
        cwd=where, env=_env(), capture_output=True, text=True, timeout=300, check=False,
    )
    assert text.returncode == 0, text.stderr[-3000:]
    return where, json.loads(proc.stdout), text.stdout


@pytest.mark.slow
def test_demo_runs_the_sample_day_from_any_folder(demo: tuple[Path, dict[str, Any], str]) -> None:
    tmp_path, result, _ = demo
    env = _env()
    assert result["ok"] is True
    runs = {run["feed"]: run for run in result["runs"]}
    hourly, daily = runs["acme_hourly"], runs["acme_daily"]
    assert [r["feed"] for r in result["runs"]][:2] == ["acme_hourly", "acme_daily"]  # hourly first
    assert all(run["balanced"] for run in result["runs"])
    assert hourly["accepted"] > 1000 and 0 < daily["accepted"] < 100  # the daily file adds what was missing
    assert result["sandbox_stats"]["duplicate_transaction_attempts"] == 0
    poslog = runs["poslog_store"]  # the ARTS POSLog day: 3 sales and a return, 5 skipped
    assert poslog["accepted"] == 4 and sum(poslog["skipped_by_kind"].values()) == 5
    # the day's sign-ups become members, and members claim guest receipts of the same day
    assert runs["acme_enrollments"]["accepted"] == 3 and runs["acme_claims"]["accepted"] == 4
    assert runs["acme_claims"]["not_sent"] == 1  # a receipt no store sold (unmatched_claim)
    for run in result["runs"]:
        folder = Path(run["reports_path"])
        assert folder.is_relative_to(tmp_path / "demo" / "reports")
        names = {p.name for p in folder.iterdir()}
        assert names == {"summary.csv", "detail.csv", "rejects.csv", "summary.json", "report.html"}
    assert not (tmp_path / ".posfeed").exists() and not (tmp_path / "reports").exists()
    text = subprocess.run(
        [sys.executable, "-m", "pipeline", "--state-dir", result["state_dir"], "runs"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert hourly["run_id"] in text.stdout and daily["run_id"] in text.stdout


@pytest.mark.slow
def test_the_printed_follow_up_works_on_the_demo_folder(demo: tuple[Path, dict[str, Any], str]) -> None:
    tmp_path, _, text = demo
    hint = re.search(r"^try: (posfeed .*)$", text, flags=re.MULTILINE)
    assert hint, text[-2000:]
    args = shlex.split(hint.group(1))[1:]
    runs = subprocess.run([sys.executable, "-m", "pipeline", *args, "--json"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120, check=True)
    run_id = json.loads(runs.stdout)[0]["run_id"]
    report_args = [*args[:args.index("runs")], "report", run_id]  # `report RUN_ID`, as the docs say
    report = subprocess.run([sys.executable, "-m", "pipeline", *report_args], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=120, check=False)
    assert report.returncode == 0, report.stderr[-2000:]
    assert not (tmp_path / "reports").exists()  # never into the current folder
    assert list((tmp_path / "demo-text" / "reports").glob(f"*/{run_id}/report.html"))


@pytest.mark.slow
def test_the_sample_figures_in_the_reports_doc_are_a_real_run(demo: tuple[Path, dict[str, Any], str]) -> None:
    """docs/REPORTS.md's `acme_hourly` day, its `currencies` and its console lines, as a run gives them."""
    _, result, _ = demo
    hourly = next(run for run in result["runs"] if run["feed"] == "acme_hourly")
    doc = REPORTS_DOC.read_text(encoding="utf-8").split("### Money per currency", 1)[1]
    documented = json.loads(doc.split("```json", 1)[1].split("```", 1)[0])
    assert documented["currencies"] == hourly["currencies"]
    console = doc.split("```text", 1)[1].split("```", 1)[0].splitlines()
    expected = [f"  in:        {hourly['rows_in']} rows, {hourly['transactions_in']} transactions",
                *currency_lines(hourly),
                f"  accepted:  {hourly['accepted']} (points {hourly['points_awarded']})"]
    assert [line for line in console if line.startswith("  ")] == expected


CLI_DOC = REPORTS_DOC.parent / "CLI.md"


@pytest.mark.slow
def test_the_run_json_keys_in_the_cli_reference_are_real(demo: tuple[Path, dict[str, Any], str]) -> None:
    """docs/CLI.md's `run --json` paragraph names every key of a run's document and no other."""
    _, result, _ = demo
    paragraph = CLI_DOC.read_text(encoding="utf-8").split("`--json` prints the run's document", 1)[1]
    keys_part = paragraph.split("A run stopped by a signal", 1)[0]
    named = {w for quoted in re.findall(r"`([^`]+)`", keys_part) if not quoted.startswith("posfeed ")
             for w in re.split(r"[\s,{}]+", quoted) if re.fullmatch(r"[a-z_]+", w) and w != "null"}
    inner = {"carried", "oldest_waiting_since", "oldest_waiting_minutes",  # the backlog object
             "state", "code", "message", "count"}  # each of `causes`
    for run in result["runs"]:
        keys = set(run)
        assert keys <= named, f"{run['feed']}: undocumented keys {sorted(keys - named)}"
        assert named - inner <= keys, f"{run['feed']}: documented, absent {sorted(named - inner - keys)}"
    absent = paragraph.split("but not its", 1)[1].split(".", 1)[0]
    assert {w for w in re.findall(r"[a-z_]+", absent)} & set(result["runs"][0]) == set()


def test_sign_ups_and_claims_print_no_money_line(demo: tuple[Path, dict[str, Any], str]) -> None:
    """Enrollments and claims carry no money: their summaries print no "(none): in 0.00 = ..." line,
    while the checkout feeds keep one line per currency."""
    blocks = {block.split(" ", 1)[0]: block for block in demo[2].split("\n\n")}
    for feed in ("acme_enrollments", "acme_claims"):
        assert "in 0.00 = valid" not in blocks[feed] and "(none):" not in blocks[feed], blocks[feed]
    assert "EUR:       in " in blocks["acme_hourly"]


@pytest.mark.slow
def test_the_demo_runs_the_feeds_the_readme_names(demo: tuple[Path, dict[str, Any], str]) -> None:
    """README's tour: `posfeed demo  # the sample feeds (acme, enrollments, claims, crmcom_demo,
    poslog_store) against a local sandbox`: those feeds run (acme's two), and each gets
    transactions accepted by the sandbox, the CRM.COM one too."""
    readme = (REPORTS_DOC.parents[1] / "README.md").read_text(encoding="utf-8")
    named = re.search(r"posfeed demo +# the sample feeds \(([^)]+)\)", readme)
    assert named, "README's tour no longer names the demo's feeds"
    feeds = {"acme": {"acme_hourly", "acme_daily"}, "enrollments": {"acme_enrollments"},
             "claims": {"acme_claims"}}
    expected = set().union(*(feeds.get(name, {name}) for name in named.group(1).split(", ")))
    runs = {run["feed"]: run for run in demo[1]["runs"]}
    assert set(runs) == expected
    assert all(run["accepted"] > 0 for run in runs.values()), {f: r["accepted"] for f, r in runs.items()}
