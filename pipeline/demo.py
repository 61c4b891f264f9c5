"""`posfeed demo`: the sample feeds against a local sandbox platform, with no set-up.

Starts the sandbox on a free loopback port, points the sample feeds (``feeds/acme_hourly.toml``
then ``feeds/acme_daily.toml``, which share the dedup scope "acme", against its Antavo; the day's
loyalty sign-ups (``feeds/acme_enrollments.toml``) and guest receipts claimed by members
(``feeds/acme_claims.toml``) after them; then
``feeds/crmcom_demo.toml`` against its CRM.COM, and ``feeds/poslog_store.toml``, an ARTS POSLog
till log, against its Antavo) at it with the sandbox's credentials, runs them
for the sample business date with a fresh state folder, and returns each run's summary, where the
reports are, and what the platform received.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx

import pipeline
from pipeline.config import AntavoTarget, CrmcomTarget, Feed, Settings, load_feed
from pipeline.errors import ConfigError
from pipeline.progress import NullProgress, Progress
from pipeline.runner import RunSummary, run_feed

__all__ = ["DEMO_BUSINESS_DATE", "DEMO_FEEDS", "DemoResult", "repo_root", "run_demo", "with_target_url"]

DEMO_FEEDS: tuple[str, ...] = (
    "acme_hourly", "acme_daily", "acme_enrollments", "acme_claims", "crmcom_demo", "poslog_store"
)
DEMO_BUSINESS_DATE = date(2026, 11, 20)
DEMO_REQUESTS_PER_MINUTE = 12000


def repo_root() -> Path:
    """The folder holding ``feeds/`` and ``sample_data/`` (next to the ``pipeline`` package)."""
    return Path(pipeline.__file__).resolve().parent.parent


def with_target_url(feed: Feed, base_url: str, **target: Any) -> Feed:
    """A copy of ``feed`` whose target is ``base_url`` (other target settings overridable)."""
    return feed.model_copy(update={"target": feed.target.model_copy(update={"base_url": base_url, **target})})


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _crmcom_credentials(target: CrmcomTarget, sandbox: Any) -> dict[str, str]:
    """The sandbox's CRM.COM credentials under the environment variable names the target uses."""
    from pipeline.sandbox.crmcom import PLATFORM

    config = sandbox.state.platforms[PLATFORM].config
    named = {
        target.username_env: config.username,
        target.password_env: config.password,
        target.organisation_env: config.organisation,
        target.web_api_key_env: config.web_api_key,
    }
    return {name: value for name, value in named.items() if name}


@dataclass(frozen=True)
class DemoResult:
    """What the demo did."""

    runs: list[RunSummary]
    workdir: Path
    state_dir: Path
    reports_dir: Path
    sandbox_stats: dict[str, Any]

    @property
    def ok(self) -> bool:
        """Every report balances and the platform never saw a transaction twice."""
        return all(r.summary.get("balanced") for r in self.runs) and not self.sandbox_stats.get(
            "duplicate_transaction_attempts"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "runs": [r.to_dict() for r in self.runs],
            "workdir": str(self.workdir),
            "state_dir": str(self.state_dir),
            "reports_dir": str(self.reports_dir),
            "sandbox_stats": self.sandbox_stats,
            "ok": self.ok,
        }


def run_demo(
    *,
    keep: Path | None = None,
    feeds: tuple[str, ...] = DEMO_FEEDS,
    business_date: date = DEMO_BUSINESS_DATE,
    progress: Progress | None = None,
) -> DemoResult:
    """Run the sample feeds against a fresh sandbox; state and reports go to ``keep`` (or a new
    temporary folder, left in place so the reports can be opened)."""
    from pipeline.sandbox.server import SandboxServer

    root = repo_root()
    feeds_dir = root / "feeds"
    if not (root / "sample_data").is_dir() or not feeds_dir.is_dir():
        raise ConfigError(f"the demo needs feeds/ and sample_data/ next to the package (looked in {root})")
    workdir = keep.resolve() if keep else Path(tempfile.mkdtemp(prefix="posfeed-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings(state_dir=workdir / "state", feeds_dir=feeds_dir, reports_dir=workdir / "reports")
    runs: list[RunSummary] = []
    with SandboxServer() as sandbox:
        credentials: dict[str, str] = {}
        loaded = [load_feed(name, feeds_dir) for name in feeds]
        for feed in loaded:
            if isinstance(feed.target, AntavoTarget):
                credentials[feed.target.api_key_env] = sandbox.config.api_key
                if feed.target.api_secret_env:
                    credentials[feed.target.api_secret_env] = sandbox.config.api_secret
            elif isinstance(feed.target, CrmcomTarget):
                credentials.update(_crmcom_credentials(feed.target, sandbox))
        with _environment(credentials):
            for feed in loaded:
                # the sandbox is local: no need to keep to the production rate limit
                rate = max(feed.target.requests_per_minute, DEMO_REQUESTS_PER_MINUTE)
                demo_feed = with_target_url(feed, sandbox.url, requests_per_minute=rate)
                runs.append(
                    run_feed(demo_feed, settings, business_dates=[business_date],
                             progress=progress or NullProgress())
                )
        stats: dict[str, Any] = httpx.get(f"{sandbox.url}/_sandbox/stats", timeout=10).json()
    return DemoResult(runs, workdir, settings.state_dir, settings.reports_dir, stats)
