"""What the docs show a user, as a user would try it: every `posfeed` command they print is one the
command line accepts, every TOML snippet loads as a feed file, every example output is what the
command prints, every folder and variable they name is the one read. No network, no runs: the docs
are parsed and the commands parsed, loaded or run in process."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import load_feed

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", ROOT / "feeds" / "README.md", ROOT / "cron" / "README.md",
               *(ROOT / "docs").glob("*.md")])

# what a reader puts in place of a doc's placeholders
PLACEHOLDERS = {
    "NAME": "acme_hourly", "F": "acme_hourly", "A": "acme_hourly", "RUN_ID": "20261120T031500Z-3f9a1c",
    "RUN": "20261120T031500Z-3f9a1c", "R": "20261120T031500Z-3f9a1c", "ID": "12", "D": "2026-11-20",
    "YYYY-MM-DD": "2026-11-20", "FILE": "README.md", "DIR": "/tmp/out", "S": "LON01", "N": "1000",
    "STATE_DIR": "/tmp/state", "URL": "postgresql://posfeed@db.example/posfeed",
}


def _doc_commands() -> list[tuple[str, str]]:
    """(document, command) for every `posfeed ...` a doc prints: each line of a shell block and
    each inline one, but the reference headings (`[--json]` syntax) and `COMMAND --help`."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        name = str(doc.relative_to(ROOT))
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S):
            for line in block.splitlines():
                line = line.split(" #", 1)[0].strip().removesuffix("&").strip()
                if line.startswith("posfeed "):
                    found.append((name, line))
        for line in text.splitlines():
            if line.startswith("### "):
                continue
            for command in re.findall(r"`(posfeed [^`]+)`", line):
                if "[" not in command and "COMMAND" not in command and "<" not in command:
                    found.append((name, command.split(" | ", 1)[0]))
    return sorted(set(found))


@contextmanager
def _parsed_only() -> Iterator[list[click.Command]]:
    """Every command's callback replaced by one that only records it was reached: click parses
    and converts the arguments as it does for real, and nothing runs."""
    reached: list[click.Command] = []
    saved: list[tuple[click.Command, object]] = []

    def stub(command: click.Command) -> None:
        saved.append((command, command.callback))
        command.callback = lambda *args, **kwargs: reached.append(command)
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                stub(sub)

    stub(cli)
    try:
        yield reached
    finally:
        for command, callback in saved:
            command.callback = callback  # type: ignore[assignment]


def _substituted(command: str) -> list[str]:
    words = shlex.split(command)[1:]
    return [PLACEHOLDERS.get(word, word) for word in words]


DOC_COMMANDS = _doc_commands()


def test_the_docs_print_commands() -> None:
    """The collection below finds the commands it checks (a change of markup would empty it)."""
    docs = {doc for doc, _ in DOC_COMMANDS}
    assert {"README.md", "docs/CLI.md", "docs/OPERATIONS.md", "docs/REPORTS.md", "feeds/README.md"} <= docs
    assert len(DOC_COMMANDS) > 40


@pytest.mark.parametrize(("doc", "command"), DOC_COMMANDS, ids=[f"{d}: {c}" for d, c in DOC_COMMANDS])
def test_every_command_the_docs_print_is_accepted(doc: str, command: str) -> None:
    """A command as a doc prints it (placeholders such as NAME, RUN_ID, D filled in) names a real
    command with real options and values of the right kind: click parses it without a usage error.
    An option named alone in the prose (`posfeed sandbox --state`) may lack its value, and a group
    named alone (`posfeed bench`) its command."""
    args = _substituted(command)
    with _parsed_only() as reached:
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
    if result.exit_code != 0:
        mention = ("requires an argument" in result.output or "Missing argument" in result.output
                   or "Missing parameter" in result.output
                   or "Commands:" in result.output)  # a group named alone: `posfeed bench`
        assert mention and not re.search(r"No such (option|command)|Invalid value|unexpected extra",
                                         result.output), f"{doc}: `{command}`:\n{result.output}"
        return
    help_asked = "--help" in args or "-h" in args or "--version" in args
    assert help_asked or any(not isinstance(c, click.Group) for c in reached), \
        f"{doc}: `{command}` reached no command"


TOML_SNIPPETS = [(str(doc.relative_to(ROOT)), block) for doc in DOCS
                 for block in re.findall(r"```toml\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S)]


@pytest.mark.parametrize(("doc", "snippet"), TOML_SNIPPETS, ids=[d for d, _ in TOML_SNIPPETS])
def test_every_toml_snippet_in_the_docs_loads_as_a_feed_file(doc: str, snippet: str, tmp_path: Path) -> None:
    """A snippet copied into a feed file of its own loads, and sets what it writes."""
    import tomllib

    path = tmp_path / "snippet.toml"
    path.write_text(snippet, encoding="utf-8")
    feed = load_feed(path)
    for section, values in tomllib.loads(snippet).items():
        for key, value in values.items():
            assert getattr(getattr(feed, section), key) == value, f"{doc}: {section}.{key}"


def test_the_docs_show_toml_snippets() -> None:
    assert {doc for doc, _ in TOML_SNIPPETS} >= {"docs/OPERATIONS.md", "feeds/README.md"}


def test_the_check_example_in_the_cli_reference_is_what_check_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/CLI.md's `posfeed check` example: the command as printed, from the repository's root,
    prints the lines the doc shows (its `...` stands for the lines before them)."""
    text = (ROOT / "docs" / "CLI.md").read_text(encoding="utf-8")
    block = re.search(r"```text\n\$ (posfeed check [^\n]+)\n(.*?)```", text, flags=re.S)
    assert block, "docs/CLI.md lacks its `posfeed check` example"
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(cli, shlex.split(block.group(1))[1:], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    shown = [line for line in block.group(2).splitlines() if line != "..."]
    printed = result.output.splitlines()
    assert printed[-len(shown):] == shown, result.output


def _table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header line starts with ``header``."""
    table = text.split(header, 1)[1].split("\n\n", 1)[0]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def _global_option(name: str) -> click.Option:
    option = next((p for p in cli.params if name in p.opts), None)
    assert isinstance(option, click.Option), f"posfeed has no global option {name}"
    return option


def test_the_folders_and_ledger_in_configuration_are_the_global_options(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/CONFIGURATION.md's Folders and Ledger tables: each option is a global option read from
    the variable named beside it, and a command given neither uses the default the table gives."""
    from pipeline.config import Settings

    text = (ROOT / "docs" / "CONFIGURATION.md").read_text(encoding="utf-8")
    rows = _table_rows(text, "| option | environment | default | holds |")
    rows += _table_rows(text, "| option | environment | default | what |")
    assert [row[0] for row in rows] == ["`--feeds-dir`", "`--state-dir`", "`--reports-dir`", "`--ledger-url`"]
    for name in ("POSFEED_FEEDS_DIR", "POSFEED_STATE_DIR", "POSFEED_REPORTS_DIR", "POSFEED_LEDGER_URL"):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings.from_env()
    for option, variable, default, _ in rows:
        param = _global_option(option.strip("`"))
        assert param.envvar == variable.strip("`"), f"{option}: documented {variable}, reads {param.envvar}"
        attribute = option.strip("`-").replace("-", "_")
        actual = getattr(defaults, attribute)
        if default.startswith("none"):
            assert actual is None, f"{option}: documented {default}, default {actual!r}"
        else:
            assert actual == Path(default.strip("`")), f"{option}: documented {default}, default {actual!r}"
        shown = " ".join((param.help or "").split())
        assert variable.strip("`") in shown, f"`posfeed --help` does not name {variable} for {option}"


def test_the_variables_in_configuration_are_the_ones_read() -> None:
    """docs/CONFIGURATION.md's Secrets table: the sample feeds' variables are the ones their `*_env`
    keys name, the sandbox's are its options' variables, the benchmarks' are the ones they set."""
    text = (ROOT / "docs" / "CONFIGURATION.md").read_text(encoding="utf-8")
    rows = _table_rows(text, "| variable | used by |")
    feeds = [load_feed(path) for path in sorted((ROOT / "feeds").glob("*.toml"))]
    sandbox = cli.commands["sandbox"]
    sandbox_vars: set[object] = {p.envvar for p in sandbox.params if isinstance(p, click.Option) and p.envvar}
    bench_source = "\n".join(p.read_text(encoding="utf-8")
                             for p in (ROOT / "pipeline" / "benchmarks").glob("*.py"))
    for cells in rows:
        variables = re.findall(r"`([A-Z_]+)`", cells[0])
        used_by = cells[1]
        assert variables, cells
        for variable in variables:
            read: set[object]
            if "sample Antavo" in used_by:
                read = {getattr(f.target, key) for f in feeds if f.target.kind == "antavo"
                        for key in ("api_key_env", "api_secret_env")}
            elif "sample CRM.COM" in used_by:
                read = {getattr(f.target, key) for f in feeds if f.target.kind == "crmcom"
                        for key in ("username_env", "password_env", "organisation_env")}
            elif "posfeed sandbox" in used_by:
                read = sandbox_vars
            else:
                assert "benchmarks" in used_by, cells
                read = set(re.findall(r'"(POSFEED_BENCH_[A-Z_]+)"', bench_source))
            assert variable in read, f"docs/CONFIGURATION.md: {variable} ({used_by}) is not read: {read}"
    documented = {v for cells in rows for v in re.findall(r"`([A-Z_]+)`", cells[0])}
    assert sandbox_vars <= documented, f"sandbox variables not in the table: {sandbox_vars - documented}"


def _exit_code_row(code: str) -> str:
    text = (ROOT / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
    rows = _table_rows(text, "| code | meaning |")
    return next(meaning for number, meaning in rows if number == code)


@pytest.mark.parametrize("doc", [*DOCS, ROOT / "sample_data" / "README.md"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_in_the_docs_renders_as_one(doc: Path) -> None:
    """Each run of `|` lines starts with its header and `|---|` line (rows after a blank line
    without them show as plain text with their pipes), and every row has the header's cells."""
    text = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), doc.read_text(encoding="utf-8"),
                  flags=re.S)
    lines = text.splitlines()
    wrong = []
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            continue
        if i == 0 or not lines[i - 1].startswith("|"):
            header = len(re.findall(r"(?<!\\)\|", line))
            following = lines[i + 1] if i + 1 < len(lines) else ""
            if not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", following):
                wrong.append(f"line {i + 1}: a table without a header: {line[:60]}")
        elif len(re.findall(r"(?<!\\)\|", line)) != header:
            wrong.append(f"line {i + 1}: not the header's number of cells: {line[:60]}")
    assert not wrong, f"{doc.relative_to(ROOT)}: {wrong}"


def _readme_canonical() -> tuple[list[list[str]], str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8").split("## The canonical layout", 1)[1]
    example = text.split("```csv\n", 1)[1].split("```", 1)[0]
    return _table_rows(text, "| column | required | meaning |"), example


def test_the_canonical_layout_in_the_readme_is_the_one_read(tmp_path: Path) -> None:
    """README's canonical layout: its columns, in order, are the reader's; a file without a
    column marked required cannot be read, one without any other column can; its example file
    passes `posfeed check` clean."""
    from pipeline.check_commands import check_files
    from pipeline.records import CANONICAL_COLUMNS, REQUIRED_COLUMNS

    rows, example = _readme_canonical()
    columns = [cells[0].strip("`") for cells in rows]
    assert columns == list(CANONICAL_COLUMNS)
    required = [cells[0].strip("`") for cells in rows if cells[1] == "yes"]
    assert required == list(REQUIRED_COLUMNS)
    assert {cells[1] for cells in rows} == {"yes", "no"}
    header, line = example.splitlines()
    assert header.split(",") == columns
    path = tmp_path / "pos_LON01_20261120.csv"
    path.write_text(example, encoding="utf-8")
    summary = check_files([path]).summary
    assert summary["transactions_valid"] == 1 and summary["rows_rejected"] == 0, summary
    for column in columns:  # the example without one column
        keep = [i for i, name in enumerate(columns) if name != column]
        path.write_text("\n".join(",".join(row.split(",")[i] for i in keep) for row in (header, line)) + "\n",
                        encoding="utf-8")
        summary = check_files([path]).summary
        readable = not summary["unreadable_files"]
        assert readable == (column not in required), f"{column}: {summary['unreadable_files']}"


def test_the_sample_feeds_table_in_the_readme_is_the_feeds_folder() -> None:
    """README's sample feeds: every feed file of feeds/ has its row, and the files a row says it
    reads are the ones its source finds for the sample day."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = _table_rows(text, "| feed | reads | what it shows |")
    documented: dict[str, Path] = {}
    for cells in rows:
        names = re.findall(r"`([a-z_]+)`", cells[0])
        paths = re.findall(r"`([^`]+)`", cells[1])
        assert len(names) == len(paths), cells
        folder = Path(paths[0]).parent
        for name, path in zip(names, paths, strict=True):
            documented[name] = folder / path if "/" not in path else Path(path)
    assert sorted(documented) == sorted(p.stem for p in (ROOT / "feeds").glob("*.toml"))
    for name, path in documented.items():
        feed = load_feed(name, ROOT / "feeds")
        source = (feed.config_dir / feed.source.path).resolve()
        assert source == (ROOT / path.parent).resolve(), f"{name}: reads {source}, README says {path}"
        pattern = feed.source.pattern.replace("{business_date:%Y%m%d}", "20261120")
        glob = path.name.replace("<store>", "*").replace("<HH>", "??")
        found = sorted(p.name for p in source.glob(pattern))
        assert found and found == sorted(p.name for p in source.glob(glob)), f"{name}: {found}"


@pytest.mark.parametrize(("args", "option"), [
    (["report", "20261120T031500Z-3f9a1c"], "RUN_ID"),
    (["rerun", "20261120T031500Z-3f9a1c"], "RUN_ID"),
    (["release", "pos_BER01_20261120_14.csv"], "FILE"),
    (["problems", "--resolve", "12"], "--resolve"),
])
def test_naming_what_a_missing_ledger_cannot_hold_is_a_usage_error(tmp_path: Path, args: list[str],
                                                                   option: str) -> None:
    """docs/OPERATIONS.md: `report` or `rerun` of an unknown run id, `release` of a file not in
    quarantine, `problems --resolve` of no open problem exit 2. A state folder with no ledger (a
    mistyped `--state-dir`) holds none of them: the same exit, naming the option and the ledger,
    whichever of them is asked (`report` and `release` used to exit 78, `problems` 0)."""
    row = _exit_code_row("2")
    for promise in ("`report` or `rerun` of an unknown run id", "`problems --resolve` of no open problem",
                    "`release` of a file that is not in quarantine"):
        assert promise in row
    state = tmp_path / "state"
    result = CliRunner().invoke(cli, ["--state-dir", str(state), "--feeds-dir", str(ROOT / "feeds"), *args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for {option}" in result.output and f"no ledger at {state}" in result.output, \
        result.output
    assert not state.exists()


@pytest.fixture(scope="module")
def sample_dry_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reports folder of `posfeed run --feed acme_hourly --business-date 2026-11-20 --dry-run`
    in a copy of the feeds and sample data: the sample day's files, no network, no platform."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    where = tmp_path_factory.mktemp("dry")
    for folder in ("feeds", "sample_data"):
        shutil.copytree(ROOT / folder, where / folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSFEED_", "ANTAVO_", "CRMCOM_"))}
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", "--feed", "acme_hourly",
                           "--business-date", "2026-11-20", "--dry-run", "--json"],
                          cwd=where, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 65, done.stderr[-3000:]  # the sample day's deliberate defects
    return where / json.loads(done.stdout)["reports_path"]


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_runs_report_files_are_what_reports_md_says(sample_dry_run: Path) -> None:
    """docs/REPORTS.md on the sample day's report as written: the five files; `summary.csv` and
    `detail.csv` with the documented columns; every `summary.csv` row balancing as its `balanced`
    column is defined (queued is final in a dry run, as the states table says); per currency its
    rows add up to `summary.json`'s `currencies`; `detail.csv` one row per transaction, in the
    states `summary.json` counts; `rejects.csv` one row per rejected input line."""
    import json
    from collections import Counter, defaultdict
    from decimal import Decimal

    from tests.test_reports import _documented_columns

    text = (ROOT / "docs" / "REPORTS.md").read_text(encoding="utf-8")
    assert {p.name for p in sample_dry_run.iterdir()} == {"summary.csv", "detail.csv", "rejects.csv",
                                                          "summary.json", "report.html"}
    summary = json.loads((sample_dry_run / "summary.json").read_text(encoding="utf-8"))
    rows = _csv_rows(sample_dry_run / "summary.csv")
    detail = _csv_rows(sample_dry_run / "detail.csv")
    rejects = _csv_rows(sample_dry_run / "rejects.csv")
    assert list(detail[0]) == _documented_columns("**`detail.csv`**")
    assert set(rows[0]) == set(_documented_columns("**`summary.csv`**"))

    states_table = _table_rows(text, "| state | meaning | final |")
    states = [cells[0].strip("`") for cells in states_table]
    final_in_a_dry_run = {cells[0].strip("`") for cells in states_table
                          if cells[2] == "yes" or "yes in a dry run" in cells[2]}
    balanced_meaning = next(cells[1] for cells in _table_rows(text.split("**`summary.csv`**", 1)[1],
                                                              "| column | meaning |")
                            if cells[0] == "`balanced`")
    if "dry run" not in balanced_meaning:  # the column's own definition, as a reader applies it
        final_in_a_dry_run -= {s for s in states if s.replace("_", " ") in balanced_meaning}
    money: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows:
        count = sum(int(row[f"{s}_count"]) for s in states)
        amount = sum(Decimal(row[f"{s}_amount"]) for s in states)
        assert count == int(row["transactions_accounted"]) == int(row["transactions_in"]), row
        assert amount == Decimal(row["amount_accounted"]) == Decimal(row["amount_in"]), row
        assert row["rows_in"] == row["rows_accounted"], row
        settled = all(int(row[f"{s}_count"]) == 0 for s in states if s not in final_in_a_dry_run)
        assert row["balanced"] == ("true" if settled else "false"), (balanced_meaning, row)
        money[row["currency"]] += Decimal(row["amount_in"])
    assert {c: str(v) for c, v in money.items()} == {c: v["amount_in"]
                                                     for c, v in summary["currencies"].items()}
    assert any(int(row["queued_count"]) for row in rows)  # the dry run's "would be sent"

    assert len(detail) == summary["transactions_in"]
    assert sum(int(r["rows"]) for r in detail) == summary["rows_in"]
    by_state = Counter(r["state"] for r in detail)
    assert by_state["rejected"] == summary["transactions_rejected"]
    assert by_state["queued"] == summary["queued"]
    assert by_state["duplicate"] == summary["duplicates"] and by_state["void"] == summary["voids"]
    assert len(rejects) == summary["rows_rejected"]


def test_the_hours_the_readme_says_never_arrive_are_the_ones_the_run_names(sample_dry_run: Path) -> None:
    """README's `acme_hourly` row: "one hour per store never arrives", and which of them the run
    names missing (the others fall outside the hours `[expected]` watches): the run's
    `missing_files` are the ones the row names, no more (that each store's hourly files lack one
    hour: tests/test_samplegen.py)."""
    import json

    row = next(cells for cells in _table_rows((ROOT / "README.md").read_text(encoding="utf-8"),
                                              "| feed | reads | what it shows |")
               if cells[0] == "`acme_hourly`")
    assert "one hour per store never arrives" in row[2]
    named = {(store, int(hour)) for store, hour in re.findall(r"(\w+)'s hour (\d+)", row[2])}
    summary = json.loads((sample_dry_run / "summary.json").read_text(encoding="utf-8"))
    missing = {(m["store_id"], m["hour"]) for m in summary["missing_files"] if m["status"] == "missing"}
    assert missing == named, f"the run names {sorted(missing)} missing; README names {sorted(named)}"
