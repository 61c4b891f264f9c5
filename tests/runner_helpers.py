"""Helpers for run tests: sample feeds pointed at a sandbox and a private folder, sandbox listings."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.config import Feed, Settings, load_feed
from pipeline.demo import repo_root
from pipeline.sandbox.server import SandboxServer
from tests.sandbox_fixtures import TARGET_KITS

REPO = repo_root()
SAMPLE_ACME = REPO / "sample_data" / "acme"
BUSINESS_DATE = date(2026, 11, 20)


def copy_samples(dest: Path, patterns: Iterable[str]) -> list[Path]:
    """Copy the acme sample files matching ``patterns`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for pattern in patterns:
        for path in sorted(SAMPLE_ACME.glob(pattern)):
            copied.append(Path(shutil.copy2(path, dest / path.name)))
    return copied


def sample_feed(
    name: str,
    sandbox: SandboxServer,
    *,
    folder: Path | None = None,
    pattern: str | None = None,
    source: dict[str, Any] | None = None,
    target_kind: str = "antavo",
    **target: Any,
) -> Feed:
    """A sample feed (feeds/NAME.toml) reading ``folder`` and sending to the sandbox, fast retries."""
    base = load_feed(name, REPO / "feeds")
    source_update: dict[str, Any] = dict(source or {})
    if folder is not None:
        source_update["path"] = str(folder)
    if pattern is not None:
        source_update["pattern"] = pattern
    if target_kind == "antavo":
        new_target = base.target.model_copy(update={
            "base_url": sandbox.url, "requests_per_minute": 60000, "backoff_base_seconds": 0.01,
            "backoff_max_seconds": 0.05, "timeout_seconds": 10, **target,
        })
    else:
        kit_feed = TARGET_KITS[target_kind].feed(sandbox, **target)
        new_target = kit_feed.target
    new_source = base.source.model_copy(update=source_update)
    return base.model_copy(update={"source": new_source, "target": new_target})


def settings_in(tmp: Path) -> Settings:
    """Settings with state and reports under ``tmp``."""
    return Settings(state_dir=tmp / "state", feeds_dir=REPO / "feeds", reports_dir=tmp / "reports")


@contextmanager
def credentials(sandbox: SandboxServer, target_kind: str = "antavo") -> Iterator[None]:
    """The sandbox's credentials in the environment while the block runs."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in TARGET_KITS[target_kind].env(sandbox).items():
            patch.setenv(key, value)
        yield


def stats(sandbox: SandboxServer) -> dict[str, Any]:
    """The sandbox's counters."""
    data: dict[str, Any] = httpx.get(f"{sandbox.url}/_sandbox/stats", timeout=10).json()
    return data


def delivered_ids(sandbox: SandboxServer) -> list[str]:
    """Every transaction id the platform holds (sales and, nested in them, refunds), with repeats."""
    listing = httpx.get(f"{sandbox.url}/_sandbox/transactions", timeout=10).json()["transactions"]
    ids: list[str] = []
    for record in listing:
        ids.append(str(record["transaction_id"]))
        for refund in record.get("refunds") or []:
            if isinstance(refund, dict) and refund.get("transaction_id"):
                ids.append(str(refund["transaction_id"]))
    return ids


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def feed_toml(feed: Feed) -> str:
    """The feed as a TOML file (what ops would write)."""
    data = feed.model_dump(mode="json", exclude_none=True, exclude={"name"})  # the file name names it
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for key, table in data.items():
        if not isinstance(table, dict):
            continue
        lines.append(f"\n[{key}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
        for sub, subtable in table.items():
            if isinstance(subtable, dict):
                lines.append(f"\n[{key}.{sub}]")
                lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in subtable.items()]
    return "\n".join(lines) + "\n"
