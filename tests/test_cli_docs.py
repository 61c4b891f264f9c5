"""The documentation holds: every command has an entry in docs/CLI.md, every link resolves.

Feed keys are checked against feeds/README.md in test_config; the reject code table in
docs/REPORTS.md against the catalog in test_cli_check.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import pytest

from pipeline.cli import cli

ROOT = Path(__file__).resolve().parent.parent
CLI_DOC = (ROOT / "docs" / "CLI.md").read_text(encoding="utf-8")
HEADINGS = re.findall(r"^### `posfeed ([a-z0-9 -]+?)(?: [\[A-Z-]|`)", CLI_DOC, flags=re.MULTILINE)
DOCUMENTS = sorted(
    [ROOT / "README.md", ROOT / "feeds" / "README.md", ROOT / "cron" / "README.md",
     ROOT / "sample_data" / "README.md", *(ROOT / "docs").glob("*.md")]
)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
README_MAX_CHARS = 15_000


def _command_paths(group: click.Group, prefix: str = "") -> list[str]:
    paths = []
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            paths += _command_paths(command, f"{path} ")
        else:
            paths.append(path)
    return paths


def _anchors(text: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_command_has_an_entry_in_the_cli_reference() -> None:
    documented = {heading.strip() for heading in HEADINGS}
    missing = [path for path in _command_paths(cli) if path not in documented]
    assert not missing, f"commands without a '### `posfeed …`' entry in docs/CLI.md: {missing}"


def test_every_cli_reference_entry_is_a_command() -> None:
    commands = set(_command_paths(cli)) | {"bench"}
    unknown = [heading for heading in HEADINGS if heading.strip() not in commands]
    assert not unknown, f"docs/CLI.md documents commands that do not exist: {unknown}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(document: Path) -> None:
    broken = []
    for target in LINK.findall(document.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path_part, _, anchor = target.partition("#")
        linked = (document.parent / path_part).resolve() if path_part else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{document.relative_to(ROOT)} has broken links: {broken}"


def test_readme_is_a_front_door() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text) <= README_MAX_CHARS, f"README.md is {len(text)} characters; move reference text to docs/"
    first_block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert first_block, "README.md starts without its two commands"
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["pip install -e . && posfeed demo", "scripts/test"]
    for doc in ("CLI", "CONFIGURATION", "REPORTS", "PLATFORMS", "OPERATIONS", "ARCHITECTURE", "BENCHMARKS"):
        assert f"docs/{doc}.md" in text, f"README.md does not link docs/{doc}.md"


def _sections(command_path: str) -> str:
    """Every docs/CLI.md entry whose heading names ``command_path`` (`runs` has two)."""
    parts = re.split(r"^(?=### )", CLI_DOC, flags=re.MULTILINE)
    return "\n".join(part for part in parts
                     if re.match(rf"### `posfeed {re.escape(command_path)}(?: [\[A-Z-]|`)", part))


def _command(path: str) -> click.Command:
    command: click.Command = cli
    for word in path.split():
        assert isinstance(command, click.Group)
        command = command.commands[word]
    return command


@pytest.mark.parametrize("path", _command_paths(cli))
def test_every_option_of_a_command_is_in_its_cli_reference_entry(path: str) -> None:
    """What `posfeed COMMAND --help` lists, the heading(s) of its docs/CLI.md entry name, and no more."""
    heading = "\n".join(line for line in _sections(path).splitlines() if line.startswith("### "))
    options = [opt for param in _command(path).params if isinstance(param, click.Option)
               for opt in param.opts if opt.startswith("--")]
    missing = [opt for opt in options if not re.search(rf"{re.escape(opt)}(?![\w-])", heading)]
    assert not missing, f"docs/CLI.md's heading of `posfeed {path}` lacks {missing}"
    documented = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", heading))
    unknown = documented - set(options) - {"--help"}
    assert not unknown, f"docs/CLI.md's heading of `posfeed {path}` names options it does not have: {unknown}"


def test_the_global_options_are_in_the_cli_reference() -> None:
    intro = CLI_DOC.split("### ", 1)[0]
    options = [opt for param in cli.params if isinstance(param, click.Option)
               for opt in param.opts if opt not in ("--help", "--verbose")]
    missing = [opt for opt in options if f"`{opt}" not in intro]
    assert not missing, f"docs/CLI.md's global options lack {missing}"


def test_problems_help_says_what_it_lists_and_how_to_acknowledge() -> None:
    """`posfeed problems --help` names every problem kind and the acknowledgement, as docs/CLI.md does."""
    from click.testing import CliRunner

    from pipeline.problems import KINDS

    shown = CliRunner().invoke(cli, ["problems", "--help"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    missing = [kind for kind in KINDS if kind not in text]
    assert not missing, f"`posfeed problems --help` does not name the kinds {missing}"
    assert "what to do" in text and "acknowledge" in text.lower() and "--all" in text


def _same(documented: str, default: object) -> bool:
    if isinstance(default, bool):
        return False
    if isinstance(default, int | float):
        try:
            return float(documented) == float(default)
        except ValueError:
            return False
    return documented == str(default)


@pytest.mark.parametrize("path", _command_paths(cli))
def test_every_default_in_a_cli_reference_heading_is_the_commands_default(path: str) -> None:
    """`[--port 8765]` in a docs/CLI.md heading is what the command takes without the option
    (a metavar in capitals, `[--limit N]`, names no default)."""
    heading = "\n".join(line for line in _sections(path).splitlines() if line.startswith("### "))
    command = _command(path)
    wrong = []
    for option, value in re.findall(r"\[(--[a-z0-9-]+) ([^\]\s]+)\]", heading):
        if value.isupper():
            continue
        param = next(p for p in command.params if option in p.opts)
        if param.default is not None and not _same(value, param.default):
            wrong.append(f"{option}: documented {value}, the command's default is {param.default!r}")
    assert not wrong, f"docs/CLI.md's heading of `posfeed {path}`: {wrong}"


def _problem() -> Any:
    from pipeline.problems import Problem

    return Problem(id=12, kind="missing_file", key="k", feed="acme_hourly", scope="acme", status="open",
                   stage=0, summary="s", action="a", store_id="BER01", business_date="2026-11-20",
                   subject="f.csv", counts={}, opened_at="t", escalated_at=None, resolved_at=None,
                   opened_run_id="r", last_run_id="r")


def test_the_alert_payload_in_operations_is_the_one_sent() -> None:
    from pipeline.problems import alert_document

    text = (ROOT / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
    block = re.search(r"\*\*The payload\*\*.*?```json\n(.*?)```", text, re.S)
    assert block, "docs/OPERATIONS.md lacks the payload example"
    documented = set(json.loads(block.group(1)))
    sent = set(alert_document(_problem(), "opened", run_id="r", host="h", created_at="t"))
    assert documented == sent, f"documented only: {documented - sent}; sent only: {sent - documented}"


def test_problems_json_keys_in_the_cli_reference_are_a_problems_keys() -> None:
    """`posfeed problems --json`: the keys docs/CLI.md lists, the payload without its delivery fields."""
    match = re.search(r"without the delivery fields \(([^)]*)\)", _sections("problems"))
    assert match, "docs/CLI.md's `posfeed problems` entry lacks its --json keys"
    documented = {key.strip().strip("`") for key in match.group(1).split(",")}
    keys = set(_problem().to_dict())
    assert documented == keys, f"documented only: {documented - keys}; listed only: {keys - documented}"


def test_the_problem_kinds_table_in_operations_is_the_codes() -> None:
    """docs/OPERATIONS.md's kinds table: every kind the code keeps, with the level it alerts at."""
    from pipeline.problems import KINDS

    text = (ROOT / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
    table = text.split("| kind | identity", 1)[1].split("\n\n", 1)[0]
    documented = {cells[1].strip().strip("`"): cells[-2].strip()
                  for cells in (line.split("|") for line in table.splitlines()[2:])}
    assert documented == dict(KINDS)


def test_check_json_keys_in_the_cli_reference_are_the_summarys() -> None:
    """The keys docs/CLI.md says `posfeed check --json` prints are the summary's keys."""
    from pipeline.check_commands import check_files

    entry = " ".join(_sections("check").split())
    match = re.search(r"`--json` prints the summary keys `([^`]*)`.*?and `currencies`.*?plus `([^`]*)`",
                      entry)
    assert match, "docs/CLI.md's `posfeed check` entry lacks its --json keys"
    documented = {key.strip() for key in f"{match.group(1)},{match.group(2)}".split(",")} | {"currencies"}
    keys = set(check_files([ROOT / "sample_data" / "acme" / "pos_LON01_20261120_13.csv"]).summary)
    assert documented == keys, f"documented only: {documented - keys}; printed only: {keys - documented}"


PROSE_DEFAULT = re.compile(r"`(--[a-z0-9-]+)` (?:seconds )?\((?:default )?`?([^`;)\s]+)`?[;)]")


@pytest.mark.parametrize("path", _command_paths(cli))
def test_every_default_in_a_cli_reference_entrys_prose_is_the_commands_default(path: str) -> None:
    """A default an entry's text gives beside its option (`--crmcom-username` (`posfeed`),
    `--misfire-grace` (default `12h`; ...), `--token-ttl` seconds (7200; ...)) is the command's."""
    command = _command(path)
    body = " ".join("\n".join(line for line in _sections(path).splitlines()
                              if not line.startswith("### ")).split())
    wrong = []
    for option, value in PROSE_DEFAULT.findall(body):
        param = next((p for p in command.params if option in p.opts), None)
        if param is None or param.default is None:
            continue
        if not _same(value, param.default):
            wrong.append(f"{option}: documented {value}, the command's default is {param.default!r}")
    assert not wrong, f"docs/CLI.md's entry of `posfeed {path}`: {wrong}"


def test_the_cli_reference_gives_defaults_in_its_prose() -> None:
    text = " ".join(f"{_sections('sandbox')} {_sections('schedule')}".split())
    found = PROSE_DEFAULT.findall(text)
    assert {option for option, _ in found} >= {"--crmcom-username", "--crmcom-password", "--token-ttl",
                                                "--misfire-grace"}, found
