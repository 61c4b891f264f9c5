"""Every command and benchmark of the CLI is documented in README's CLI reference."""

from __future__ import annotations

import re
from pathlib import Path

import click

from pipeline.cli import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
HEADINGS = re.findall(r"^### `posfeed ([a-z0-9 -]+?)(?: [\[A-Z-]|`)", README, flags=re.MULTILINE)


def _command_paths(group: click.Group, prefix: str = "") -> list[str]:
    paths = []
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            paths += _command_paths(command, f"{path} ")
        else:
            paths.append(path)
    return paths


def test_every_command_has_a_readme_entry() -> None:
    documented = {heading.strip() for heading in HEADINGS}
    missing = [path for path in _command_paths(cli) if path not in documented]
    assert not missing, f"commands without a '### `posfeed …`' entry in README.md: {missing}"


def test_every_readme_entry_is_a_command() -> None:
    commands = set(_command_paths(cli)) | {"bench"}
    unknown = [heading for heading in HEADINGS if heading.strip() not in commands]
    assert not unknown, f"README.md documents commands that do not exist: {unknown}"
