"""Helpers for the operations tests: a clean day of sales, a feed file pointing at a sandbox, and
`python -m pipeline` in a real subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

from pipeline.config import Feed
from pipeline.ledger import Ledger
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import feed_toml, sample_feed
from tests.sandbox_fixtures import TARGET_KITS

HEADER = (
    "transaction_id,store_id,register_id,timestamp,business_date,customer_id,transaction_type,line_no,"
    "product_id,product_name,product_category,quantity,unit_price,discount,line_total,currency,"
    "transaction_total,points_burned,original_transaction_id"
)


def clean_day(folder: Path, count: int = 200, *, name: str | None = None, day: date = date(2026, 11, 20)
              ) -> list[str]:
    """Write ``count`` valid sales of ``day`` (every tenth a guest) into one file; returns their ids."""
    folder.mkdir(parents=True, exist_ok=True)
    compact, iso = day.strftime("%Y%m%d"), day.isoformat()
    lines, ids = [HEADER], []
    for i in range(count):
        minute, second = divmod(i * 7 % 3600, 60)
        tid = f"LON01-R1-{compact}-{i:04d}"
        customer = "" if i % 10 == 9 else f"M{700000 + i}"
        lines.append(f"{tid},LON01,R1,{iso} 10:{minute:02d}:{second:02d},{iso},{customer},sale,1,"
                     "100403,Flat white,coffee,1,3.10,,3.10,GBP,3.10,,")
        ids.append(tid)
    (folder / (name or f"pos_LON01_{compact}_10.csv")).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ids


def ops_feed(sandbox: SandboxServer, folder: Path, *, target_kind: str = "antavo", **target: Any) -> Feed:
    """acme_hourly reading ``folder``, sending to ``sandbox``, without expected-file warnings."""
    feed = sample_feed("acme_hourly", sandbox, folder=folder, target_kind=target_kind)
    changes = {"max_attempts": 2, "backoff_base_seconds": 0.01, "backoff_max_seconds": 0.05, **target}
    return feed.model_copy(
        update={
            "target": feed.target.model_copy(update=changes),
            "expected": feed.expected.model_copy(update={"cadence": "none"}),
        }
    )


def write_feed(feed: Feed, path: Path) -> Path:
    """The feed as a TOML file at ``path``."""
    path.write_text(feed_toml(feed), encoding="utf-8")
    return path


def free_port() -> int:
    """A TCP port nothing listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def env_for(sandbox: SandboxServer | None, target_kind: str = "antavo", **extra: str) -> dict[str, str]:
    """The environment with the sandbox's credentials (and ``extra`` overrides)."""
    env = {**os.environ}
    if sandbox is not None:
        env.update(TARGET_KITS[target_kind].env(sandbox))
    env.update(extra)
    return env


def posfeed_args(tmp: Path, *args: str) -> list[str]:
    """``python -m pipeline`` with state and reports under ``tmp``."""
    return [
        sys.executable,
        "-m",
        "pipeline",
        "--state-dir",
        str(tmp / "state"),
        "--reports-dir",
        str(tmp / "reports"),
        *args,
    ]


def posfeed(
    tmp: Path, *args: str, env: dict[str, str], timeout: float = 300, wrap: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run posfeed to the end in a subprocess (``wrap`` prefixes the command, e.g. unshare)."""
    return subprocess.run(
        [*(wrap or []), *posfeed_args(tmp, *args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=tmp,
    )


def run_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The `--json` summary a run printed."""
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def ledger_counts(tmp: Path, scope: str = "acme") -> dict[str, int]:
    """Rows per state in the ledger under ``tmp`` ({} when there is no ledger)."""
    path = tmp / "state" / "ledger.sqlite"
    if not path.exists():
        return {}
    with Ledger(path) as ledger:
        return ledger.state_counts(scope)


def ledger_files(tmp: Path) -> int:
    """How many files the ledger under ``tmp`` recorded."""
    path = tmp / "state" / "ledger.sqlite"
    if not path.exists():
        return 0
    with Ledger(path) as ledger:
        return len(ledger.files())
