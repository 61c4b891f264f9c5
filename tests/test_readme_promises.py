"""README's promises that no other test shows the way a reader meets them: each test reads the
claim's words from README.md where it can and checks them with real `posfeed` processes, the real
sandbox and a real ledger. (The claims other tests already demonstrate are not repeated here.)"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.cli import cli
from pipeline.sandbox.server import SandboxServer
from tests.ops_helpers import clean_day, env_for, ops_feed, posfeed, run_json, write_feed
from tests.runner_helpers import delivered_ids

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
TOUR_URL = "http://127.0.0.1:8765"


def _tour_block() -> str:
    """The tour's second block ("Then against a sandbox of your own")."""
    return README.split("Then against a sandbox of your own", 1)[1].split("```bash", 1)[1].split("```", 1)[0]


def _tour_exports() -> dict[str, str]:
    """The variables the tour's `export` lines set, as a shell sets them."""
    exported: dict[str, str] = {}
    for line in _tour_block().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("export "):
            exported.update(word.split("=", 1) for word in shlex.split(line)[1:])
    return exported


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("POSFEED_", "ANTAVO_", "CRMCOM_"))}


@pytest.fixture
def tour_sandbox(tmp_path: Path) -> Iterator[str]:
    """`posfeed sandbox &` as the tour starts it, in a real process, on a free port instead of
    :8765; yields its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "sandbox", "--port", "0"], cwd=tmp_path,
                            env=_clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        found = re.match(r"posfeed sandbox on (http://\S+)", first)
        assert found, first
        yield found.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if proc.stderr is not None:
            proc.stderr.close()


def test_the_tours_exports_are_the_sandboxs_credentials_and_feeds_then_exits_0(
        tmp_path: Path, tour_sandbox: str) -> None:
    """README's tour: `posfeed sandbox &` serves Antavo and CRM.COM on :8765 (where the sample feeds
    send), the `export` lines are "the sandbox's credentials", after which "`posfeed feeds` now
    exits 0". Run as written (only the port differs): `posfeed feeds` exits 0, and a run of an
    Antavo feed and of the CRM.COM feed gets through the credential check (exit 0 or 65, never 78)
    and is accepted by that sandbox process."""
    assert "posfeed sandbox &" in _tour_block() and ":8765" in _tour_block()
    port = next(p for p in cli.commands["sandbox"].params if p.name == "port")
    assert port.default == 8765
    exports = _tour_exports()
    assert set(exports) == {"ANTAVO_API_KEY", "ANTAVO_API_SECRET", "CRMCOM_USERNAME", "CRMCOM_PASSWORD",
                            "CRMCOM_ORGANISATION"}
    for folder in ("feeds", "sample_data"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    for feed_file in (tmp_path / "feeds").glob("*.toml"):
        text = feed_file.read_text(encoding="utf-8")
        assert TOUR_URL in text, f"{feed_file.name} does not send to the tour's sandbox"
        feed_file.write_text(text.replace(TOUR_URL, tour_sandbox), encoding="utf-8")
    env = {**_clean_env(), **exports}

    def posfeed_here(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300, check=False)

    feeds = posfeed_here("feeds")
    assert feeds.returncode == 0, feeds.stderr[-3000:]
    for feed in ("acme_enrollments", "crmcom_demo"):  # one feed per platform
        done = posfeed_here("run", "--feed", feed, "--business-date", "2026-11-20", "--json")
        assert done.returncode in (0, 65), f"{feed}: exit {done.returncode}\n{done.stderr[-3000:]}"
        assert json.loads(done.stdout)["accepted"] > 0, feed
    assert httpx.get(f"{tour_sandbox}/_sandbox/stats", timeout=10).json()["events_accepted"] > 0


def test_a_plain_run_sends_what_earlier_runs_left_before_its_new_files(tmp_path: Path) -> None:
    """README, "Stopped work resumes": "A plain run sends what earlier runs left (... failed for a
    transient reason) before its new files' transactions". A first run meets a platform that
    answers every event 503 (exit 75); an export of the next hour arrives; the plain run that
    follows puts every transaction the first run left on the platform before any of the new file's."""
    assert "sends what earlier runs left" in README and "before its new files' transactions" in README
    drop = tmp_path / "drop"
    left = clean_day(drop, 40)
    with SandboxServer() as sandbox:
        feed = write_feed(ops_feed(sandbox, drop), tmp_path / "shop.toml")
        env = env_for(sandbox)
        sandbox.config.fault_rate = 1.0
        sandbox.config.fault_kinds = ("error_503",)
        failing = posfeed(tmp_path, "run", "--feed", str(feed), "--business-date", "2026-11-20", "--json",
                          env=env)
        assert failing.returncode == 75, failing.stderr[-3000:]
        assert run_json(failing)["failed_retryable"] == len(left) and delivered_ids(sandbox) == []

        first = (drop / "pos_LON01_20261120_10.csv").read_text(encoding="utf-8")
        (drop / "pos_LON01_20261120_11.csv").write_text(
            first.replace("LON01-R1-", "LON01-R2-").replace(",R1,", ",R2,").replace(" 10:", " 11:"),
            encoding="utf-8")
        new = [tid.replace("-R1-", "-R2-") for tid in left]
        sandbox.config.fault_rate = 0.0
        plain = posfeed(tmp_path, "run", "--feed", str(feed), "--business-date", "2026-11-20", "--json",
                        env=env)
        assert plain.returncode == 0, plain.stderr[-3000:]
        assert run_json(plain)["carried_over"] == len(left)
        order = delivered_ids(sandbox)  # in the order the platform accepted them
    assert sorted(order) == sorted(left + new)
    assert set(order[:len(left)]) == set(left), "a new file's transaction went out before the left ones"


# README's words for the states of docs/REPORTS.md, as they name `summary.csv`'s columns
README_STATE_WORDS = {
    "accepted": ("accepted",), "rejected": ("rejected",), "duplicates": ("duplicate",),
    "conflicts": ("conflict",), "voids": ("void",), "not sent": ("not_sent",),
    "failed": ("failed_retryable", "failed_permanent"), "in doubt": ("in_doubt",),
}


@pytest.fixture(scope="module")
def sample_day_summary(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    """The `summary.csv` rows of the tour's `posfeed run --feed acme_hourly --business-date
    2026-11-20`, run in a copy of the feeds and sample data against the sandbox."""
    import csv

    where = tmp_path_factory.mktemp("day")
    for folder in ("feeds", "sample_data"):
        shutil.copytree(ROOT / folder, where / folder)
    with SandboxServer() as sandbox:
        for feed_file in (where / "feeds").glob("*.toml"):
            text = feed_file.read_text(encoding="utf-8")
            feed_file.write_text(text.replace(TOUR_URL, sandbox.url), encoding="utf-8")
        env = {**_clean_env(), **env_for(sandbox)}
        done = subprocess.run([sys.executable, "-m", "pipeline", "run", "--feed", "acme_hourly",
                               "--business-date", "2026-11-20", "--json"], cwd=where, env=env,
                              capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 65, done.stderr[-3000:]  # the sample day's deliberate defects
    summary_csv = where / json.loads(done.stdout)["reports_path"] / "summary.csv"
    with summary_csv.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_what_came_in_equals_the_sum_the_readme_gives_store_by_store(
        sample_day_summary: list[dict[str, str]]) -> None:
    """README, "Proved with money": "what came in equals accepted + rejected + ... store by store",
    read by finance on a real run's `summary.csv` (the sample day of `acme_hourly` against the
    sandbox): on every row the amounts (and counts) of the states the sentence names add up to
    `amount_in` (`transactions_in`), and the sentence names every state that is final in a run."""
    from decimal import Decimal

    sentence = re.search(r"what\s+came in equals ([^()]+?),\s+store by store", README)
    assert sentence, "README no longer says what came in equals"
    terms = [" ".join(term.split()) for term in sentence.group(1).split("+")]
    assert set(terms) <= set(README_STATE_WORDS), terms
    columns = [column for term in terms for column in README_STATE_WORDS[term]]
    reports = (ROOT / "docs" / "REPORTS.md").read_text(encoding="utf-8")
    states = re.findall(r"^\| `([a-z_]+)` \|.*\| yes", reports.split("| state | meaning | final |", 1)[1]
                        .split("\n\n", 1)[0], flags=re.M)
    left_out = set(states) - set(columns)
    assert not left_out, f"final states the README's sum leaves out: {left_out}"
    assert {row["store_id"] for row in sample_day_summary} == {"LON01", "BER01", "NYC01"}
    for row in sample_day_summary:
        assert row["balanced"] == "true", row
        assert sum(Decimal(row[f"{c}_amount"]) for c in columns) == Decimal(row["amount_in"]), row
        assert sum(int(row[f"{c}_count"]) for c in columns) == int(row["transactions_in"]), row


def test_summary_csv_has_one_row_per_file_store_business_date_and_currency(
        sample_day_summary: list[dict[str, str]]) -> None:
    """README: "`summary.csv` (one row per file, store, business date and currency)": on the
    sample day's run no two rows share the four, and every file the run read has its rows."""
    from collections import Counter

    assert "`summary.csv` (one row per file, store, business date and currency)" in " ".join(README.split())
    keys = Counter((r["source_file"], r["store_id"], r["business_date"], r["currency"])
                   for r in sample_day_summary)
    assert [key for key, n in keys.items() if n > 1] == []
    files = {p.name for p in (ROOT / "sample_data" / "acme").glob("pos_*_20261120_??.csv")}
    assert {r["source_file"] for r in sample_day_summary} == files


def test_the_exit_codes_the_readme_lists_are_the_ones_posfeed_exits_with() -> None:
    """README: "The exit code says what needs attention: 0 clean, 65 data errors, 75 try again
    later, 78 configuration or credentials, 74 I/O ..., 70 a bug (the full table is in
    docs/OPERATIONS.md)": each is one of posfeed's exit codes with that meaning, and a row of the
    full table. (Each code's cause: tests/test_exit_codes.py.)"""
    from pipeline import errors

    sentence = README.split("The exit code says what needs attention:", 1)[1].split("(the full table", 1)[0]
    listed = {int(code): " ".join(meaning.split())
              for code, meaning in re.findall(r"(\d+) ([^,\d]+)", sentence)}
    names = {0: "EXIT_OK", 65: "EXIT_DATA", 75: "EXIT_TEMPFAIL", 78: "EXIT_CONFIG", 74: "EXIT_IOERR",
             70: "EXIT_INTERNAL"}
    assert set(listed) == set(names), listed
    for code, name in names.items():
        assert getattr(errors, name) == code, name
    operations = (ROOT / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
    table = operations.split("| code | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = {int(code): meaning for code, meaning in re.findall(r"^\| (\d+) \| (.*) \|$", table, flags=re.M)}
    words = {0: "final state", 65: "data errors", 75: "temporary", 78: "configuration or credentials",
             74: "I/O error", 70: "bug"}
    for code, meaning in listed.items():
        assert code in rows and words[code] in rows[code], (code, meaning, rows.get(code))


def test_the_secrets_promise_says_what_a_feed_can_switch_off() -> None:
    """README, "Secrets stay secret": keys and passwords are always masked, and customer ids are
    hashed by default (tests/test_secrets_never_leak.py::test_debug_run_leaks_no_secret_and_no_customer_id),
    but a feed may keep them in clear (`logging.hash_customer_ids = false`:
    ::test_without_masking_the_ledger_keeps_real_customer_ids). The bullet says so, naming the
    setting a reader would look up, with its default."""
    from pipeline.config import LoggingConfig

    bullet = " ".join(README.split("**Secrets stay secret.**", 1)[1].split("\n\n", 1)[0].split())
    setting = re.search(r"`logging\.(\w+) = (true|false)`", bullet)
    assert setting, f"README's secrets bullet names no setting that keeps customer ids in clear: {bullet}"
    field = LoggingConfig.model_fields[setting.group(1)]
    assert field.default is True and setting.group(2) == "false", bullet


@pytest.mark.parametrize("name", ["pos.csv", "pos.jsonl", "pos.parquet", "pos.csv.gz", "pos.jsonl.gz",
                                  "pos.parquet.gz"])
def test_a_canonical_file_is_read_as_csv_json_lines_or_parquet_each_also_gzipped(
        tmp_path: Path, name: str) -> None:
    """README's canonical layout: "CSV (`,`, UTF-8), JSON Lines (one object per line, same keys) or
    Parquet, each also gzipped (a name ending in `.gz`)". The README's example file, written in
    each of them, passes `posfeed check FILE` (no feed: "format from the file suffix") clean:
    `.jsonl.gz` and `.parquet.gz` used to be read as CSV and refused as unreadable."""
    import gzip

    import polars as pl
    from click.testing import CliRunner

    example = README.split("## The canonical layout", 1)[1].split("```csv\n", 1)[1].split("```", 1)[0]
    header, line = example.splitlines()
    record = dict(zip(header.split(","), line.split(","), strict=True))
    plain = tmp_path / name.removesuffix(".gz")
    if plain.suffix == ".csv":
        plain.write_text(example, encoding="utf-8")
    elif plain.suffix == ".jsonl":
        plain.write_text(json.dumps(record) + "\n", encoding="utf-8")
    else:
        pl.DataFrame([record]).write_parquet(plain)
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(plain.read_bytes()))
        plain.unlink()
    result = CliRunner().invoke(cli, ["check", str(path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["unreadable_files"] == [], summary["unreadable_files"]
    assert (summary["transactions_valid"], summary["rows_rejected"]) == (1, 0)


def test_the_licence_the_readme_names_is_declared_and_shipped() -> None:
    """README ends "Licence: Apache-2.0.": the package declares that licence, and the checkout
    carries its text in LICENSE, as the licence asks of whoever passes the work on."""
    import tomllib

    named = re.search(r"^Licence: (\S+)\.$", README, flags=re.M)
    assert named, "README names no licence"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == {"text": named.group(1)}
    assert named.group(1) == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert " ".join(text.split()[:5]) == "Apache License Version 2.0, January"
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text


# run the command after it in a network namespace whose only network is loopback, brought up
_LOOPBACK_ONLY = """
import fcntl, os, socket, struct, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # SIOCGIFFLAGS, SIOCSIFFLAGS | IFF_UP
    flags = struct.unpack("16sH14x", fcntl.ioctl(sock, 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]
    fcntl.ioctl(sock, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))
os.execv(sys.argv[1], sys.argv[1:])
"""


@pytest.mark.slow
def test_the_demo_needs_nothing_but_python_and_keeps_its_ledger_in_a_temporary_folder(
        tmp_path: Path) -> None:
    """README: "The first command needs nothing but Python 3.11: local files, the built-in sandbox
    of the platforms and a SQLite ledger in a temporary state folder." `posfeed demo` as printed,
    from an empty folder, with no network but loopback, no credentials and no ledger settings
    (a `POSFEED_LEDGER_URL` left in the environment included): it exits 0, its ledger is a SQLite
    file in a new folder of the temporary directory, and neither the current folder nor the home
    folder gets anything."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare is needed (Debian package util-linux, essential: always installed)"
    command = next(line for line in README.split("```bash\n", 1)[1].splitlines() if "posfeed demo" in line)
    args = shlex.split(command.split("&&", 1)[1].split("#", 1)[0])
    assert args == ["posfeed", "demo"]
    here, home, temp = tmp_path / "here", tmp_path / "home", tmp_path / "tmp"
    for folder in (here, home, temp):
        folder.mkdir()
    env = {**_clean_env(), "HOME": str(home), "TMPDIR": str(temp),
           "POSFEED_LEDGER_URL": "postgresql://posfeed@db.invalid/posfeed"}
    done = subprocess.run([unshare, *([] if os.geteuid() == 0 else ["-r"]), "-n", sys.executable, "-c",
                           _LOOPBACK_ONLY, sys.executable, "-m", "pipeline", *args[1:]],
                          cwd=here, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = re.search(r"^state \(ledger\): +(\S+)$", done.stdout, flags=re.M)
    assert printed, done.stdout[-3000:]
    state = Path(printed.group(1))
    assert state.parent.parent == temp and state.parent.name.startswith("posfeed-demo-"), state
    assert (state / "ledger.sqlite").is_file()
    assert list(here.iterdir()) == [] and list(home.iterdir()) == []
