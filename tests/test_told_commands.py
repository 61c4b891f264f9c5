"""Every `posfeed ...` command posfeed itself tells a user to run (a problem's "what to do", the
report page's "Needs action", the exit cause on stderr) works as written: real `posfeed`
processes, a real sandbox, a real SQLite ledger."""

from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from tests.test_problems import DAY, Setup, closed_port

HEADER = ("transaction_id,store_id,register_id,timestamp,business_date,customer_id,transaction_type,"
          "line_no,product_id,product_name,product_category,quantity,unit_price,discount,line_total,"
          "currency,transaction_total,points_burned,original_transaction_id\n")
COMMAND = re.compile(r"`(posfeed [^`]+)`")


def _lines(customer: str, n: int) -> str:
    return (f"LON01-R1-20261120-{n:04d},LON01,R1,2026-11-20 10:{n:02d}:00,{DAY},{customer},sale,1,"
            "100104,Cheddar 400g,dairy,1,3.80,,3.80,GBP,3.80,,\n")


def test_every_command_posfeed_tells_a_user_to_run_works_as_written(tmp_path: Path, sandbox_env: Any) -> None:
    s = Setup(tmp_path, sandbox_env, "http://127.0.0.1:9/hook")
    # a member the platform does not know (refused for good) and a guest (accepted)
    (s.folder / f"pos_LON01_{DAY.replace('-', '')}_daily.csv").write_text(
        HEADER + _lines("unknown-0001", 1) + _lines("", 2), encoding="utf-8")
    told: list[str] = []

    done = s.posfeed("run", "--feed", "watch", "--business-date", DAY, "--json")
    assert done.returncode == 65, done.stderr[-2000:]
    summary_path = Path(re.search(r'"reports_path": "([^"]+)"', done.stdout)[1])  # type: ignore[index]
    cause = [line for line in done.stderr.splitlines() if '"event": "exit"' in line]
    assert cause and "refused by the platform" in cause[0]
    told += COMMAND.findall(cause[0])
    told += COMMAND.findall((summary_path / "report.html").read_text(encoding="utf-8"))

    # a rerun of that run without --include-permanent sends nothing, and says why
    rerun = s.posfeed("rerun", summary_path.name)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "1 transaction of the selection the platform refused for good" in rerun.stderr
    assert "--include-permanent" in rerun.stderr

    # the platform goes down: its problem says what to do
    s.write_feed(f"http://127.0.0.1:{closed_port()}")
    assert s.posfeed("run", "--feed", "watch", "--business-date", DAY).returncode == 75
    for problem in s.open_problems():
        told += COMMAND.findall(problem["action"])
    s.write_feed(sandbox_env.url)

    commands = {c for c in told if "--resolve ID" not in c}  # needs a problem id
    assert any("--include-permanent" in c for c in commands), told
    assert any(" rerun " in c and "--include-permanent" not in c for c in commands), told
    # as printed: the options given on the command line come with it, so it acts on this state
    # folder, feeds and reports from anywhere (not the defaults of the folder it is run in)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command in sorted(commands):
        _run_as_printed(s, command, elsewhere)
    assert not (elsewhere / ".posfeed").exists() and not (elsewhere / "reports").exists()


def _run_as_printed(s: Setup, command: str, where: Path) -> subprocess.CompletedProcess[str]:
    """``command`` (`posfeed ...`, as posfeed printed it) run from ``where`` without POSFEED_*
    settings: it carries the global options given, and is a command posfeed accepts."""
    words = shlex.split(command)
    assert words[1:7] == ["--state-dir", str(s.tmp / "state"), "--feeds-dir", str(s.feeds),
                          "--reports-dir", str(s.tmp / "reports")], command
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSFEED_")}
    ran = subprocess.run([sys.executable, "-m", "pipeline", *words[1:]], cwd=where, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert ran.returncode not in (2, 78), f"{command}: {ran.stderr[-1000:]}"
    assert "Usage:" not in ran.stderr, f"{command}: {ran.stderr[-1000:]}"
    return ran


def test_the_command_a_partly_refunded_return_tells_names_its_feed_and_works(
    tmp_path: Path, sandbox_env: Any
) -> None:
    """Before, a return the platform refunded in part was stored with `posfeed rerun --feed NAME
    ...` (a placeholder, refused as an unknown feed); it names the feed and, once the platform
    takes the rest, run as printed it sends what was refused."""
    s = Setup(tmp_path, sandbox_env, "http://127.0.0.1:9/hook")  # a part of S-1 comes back
    sandbox_env.config.refuse_refund_items = ("100105",)
    sale = (f"S-1,LON01,R1,{DAY} 10:00:00,{DAY},M1,sale,1,100104,Cheddar 400g,dairy,2,3.80,,7.60,GBP,8.80,,\n"
            f"S-1,LON01,R1,{DAY} 10:00:00,{DAY},M1,sale,2,100105,Bread,bakery,1,1.20,,1.20,GBP,8.80,,\n")
    back = (f"R-1,LON01,R1,{DAY} 11:00:00,{DAY},M1,return,1,100104,Cheddar 400g,dairy,-1,3.80,,-3.80,GBP,"
            "-5.00,,S-1\n"
            f"R-1,LON01,R1,{DAY} 11:00:00,{DAY},M1,return,2,100105,Bread,bakery,-1,1.20,,-1.20,GBP,"
            "-5.00,,S-1\n")
    (s.folder / f"pos_LON01_{DAY.replace('-', '')}_daily.csv").write_text(HEADER + sale + back,
                                                                          encoding="utf-8")
    done = s.posfeed("run", "--feed", "watch", "--business-date", DAY, "--json")
    assert done.returncode == 65, done.stderr[-2000:]
    reports = Path(re.search(r'"reports_path": "([^"]+)"', done.stdout)[1])  # type: ignore[index]
    with (reports / "detail.csv").open(encoding="utf-8", newline="") as handle:
        (row,) = [r for r in csv.DictReader(handle) if r["transaction_id"] == "R-1"]
    assert row["error_code"] == "partly_refunded", row
    (command,) = COMMAND.findall(row["error_message"])
    assert "--feed watch " in command and "NAME" not in command, command
    sandbox_env.config.refuse_refund_items = ()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ran = _run_as_printed(s, command, elsewhere)
    assert ran.returncode == 0, ran.stderr[-2000:]
    listing = httpx.get(f"{sandbox_env.url}/_sandbox/transactions", params={"platform": "antavo"},
                        timeout=10).json()["transactions"]
    (held,) = [t for t in listing if str(t["transaction_id"]) == "S-1"]
    assert Decimal(str(held["refunded"])) == Decimal("5.00")  # the bread, refused before, sent now


def test_options_from_the_environment_are_not_repeated_in_told_commands(
    tmp_path: Path, sandbox_env: Any
) -> None:
    """`POSFEED_STATE_DIR` and the like carry themselves to the command a user runs next."""
    s = Setup(tmp_path, sandbox_env, "http://127.0.0.1:9/hook")
    (s.folder / f"pos_LON01_{DAY.replace('-', '')}_daily.csv").write_text(
        HEADER + _lines("unknown-0001", 1), encoding="utf-8")
    env = {**os.environ, "POSFEED_STATE_DIR": str(tmp_path / "state"),
           "POSFEED_FEEDS_DIR": str(s.feeds), "POSFEED_REPORTS_DIR": str(tmp_path / "reports")}
    command = [sys.executable, "-m", "pipeline", "run", "--feed", "watch", "--business-date", DAY]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 65, done.stderr[-2000:]
    assert "`posfeed rerun --feed watch --failed --include-permanent`" in done.stderr, done.stderr
