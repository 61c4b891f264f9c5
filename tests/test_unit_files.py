"""The systemd units in cron/ with the environment files the docs tell users to write: everything
posfeed writes (state folder, reports) lands where the unit lets it write. A unit runs in `/` with
`ProtectSystem=strict`, so a folder left at its relative default would be read-only there (exit 74
after the run has sent, when the reports are written)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from pipeline.config import Settings

ROOT = Path(__file__).resolve().parent.parent
UNITS = sorted((ROOT / "cron").glob("*.service"))


def _env_blocks() -> dict[str, str]:
    """The environment-file examples: OPERATIONS.md's for several hosts, cron/README.md's."""
    operations = (ROOT / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
    hosts = operations.split("### Several hosts on one PostgreSQL ledger", 1)[1]
    indented = re.search(r"\n((?:    .*\n)+)", hosts)
    assert indented, "OPERATIONS.md's several-hosts section has no indented env file"
    cron = (ROOT / "cron" / "README.md").read_text(encoding="utf-8")
    fenced = [b for b in re.findall(r"```sh\n(.*?)```", cron, re.S) if "POSFEED_STATE_DIR=" in b]
    assert len(fenced) == 1, "cron/README.md's env file example"
    return {"OPERATIONS.md several hosts": indented.group(1), "cron/README.md": fenced[0]}


def _assignments(block: str) -> dict[str, str]:
    pairs = (line.strip().split("=", 1) for line in block.splitlines() if re.match(r"\s*[A-Z_]+=", line))
    return {name: value for name, value in pairs}


def _writable(unit: Path) -> list[PurePosixPath]:
    text = unit.read_text(encoding="utf-8")
    assert re.search(r"^ProtectSystem=strict$", text, re.M), unit
    assert not re.search(r"^WorkingDirectory=", text, re.M), f"{unit}: the test assumes the unit runs in /"
    lines = re.findall(r"^ReadWritePaths=(.+)$", text, re.M)
    paths = [PurePosixPath(p) for line in lines for p in line.split()]
    paths += [PurePosixPath("/var/lib") / d for d in re.findall(r"^StateDirectory=(\S+)$", text, re.M)]
    return paths


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
@pytest.mark.parametrize("example", sorted(_env_blocks()))
def test_a_unit_with_a_documented_env_file_writes_only_where_it_may(
    unit: Path, example: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("POSFEED_STATE_DIR", "POSFEED_REPORTS_DIR", "POSFEED_FEEDS_DIR", "POSFEED_LEDGER_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in _assignments(_env_blocks()[example]).items():
        if name.startswith("POSFEED_"):
            monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    writable = _writable(unit)
    for what, folder in (("state folder", settings.state_dir), ("reports", settings.reports_dir)):
        where = PurePosixPath("/") / PurePosixPath(folder)  # a unit's working directory is /
        assert any(where == w or w in where.parents for w in writable), (
            f"{example} with {unit.name}: the {what} would be {where}, outside {[str(w) for w in writable]}")


def _systemd_value(raw: str) -> str:
    """A value as systemd's EnvironmentFile reads it: one pair of single or double quotes removed."""
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return raw


@pytest.mark.parametrize("example", sorted(_env_blocks()))
def test_the_env_file_example_reads_the_same_from_cron_and_systemd(example: str, tmp_path: Path) -> None:
    """cron/crontab.example sources the file with `set -a; . $ENVFILE` (sh), the units read it with
    EnvironmentFile=: a webhook URL holding `&` (Power Automate's do) must give each the same value,
    not put half the line in the background under sh."""
    env_file = tmp_path / "env"
    env_file.write_text(_env_blocks()[example].replace("    ", ""), encoding="utf-8")
    names = _assignments(_env_blocks()[example])
    shown = subprocess.run(
        ["/bin/sh", "-c", f'set -a; . "{env_file}"; set +a; '
         + " ".join(f'printf "%s\\0" "${name}";' for name in names)],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, check=True)
    assert dict(zip(names, shown.stdout.split("\0")[:-1], strict=True)) == {
        name: _systemd_value(raw) for name, raw in names.items()}
    if example == "cron/README.md":
        assert "&" in _systemd_value(names["ALERT_WEBHOOK_URL"])  # the example shows the case


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_the_daemon_unit_reloads_with_sighup_and_a_one_shot_run_unit_has_no_reload(unit: Path) -> None:
    """`posfeed schedule` reads its feeds again on SIGHUP (systemctl reload); a `posfeed run` unit
    has nothing to reload, and SIGHUP would stop its run, so it has no ExecReload."""
    text = unit.read_text(encoding="utf-8")
    (start,) = re.findall(r"^ExecStart=(.+)$", text, re.M)
    reload = re.findall(r"^ExecReload=(.+)$", text, re.M)
    if re.search(r"\sschedule(\s|$)", start) and "--once-catchup" not in start:
        assert reload == ["/bin/kill -HUP $MAINPID"], unit
    else:
        assert reload == [], unit
