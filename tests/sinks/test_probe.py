"""The credential check against the real sandbox: what each answer means."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest

from pipeline.errors import ConfigError, CredentialsRefusedError, PlatformUnavailableError, SecretError
from pipeline.ledger import Ledger
from pipeline.runner import run_feed
from pipeline.sandbox.server import SandboxServer
from pipeline.sinks.probe import probe_credentials
from tests.ops_helpers import free_port
from tests.runner_helpers import REPO, copy_samples, sample_feed, settings_in, stats
from tests.sandbox_fixtures import TARGET_KITS, antavo_feed, crmcom_feed

POSLOG_SAMPLE = REPO / "sample_data" / "poslog" / "POSLog_0042_20261120.xml"


def test_good_credentials_pass_and_record_nothing(sandbox_env: SandboxServer) -> None:
    probe_credentials(antavo_feed(sandbox_env))
    probe_credentials(antavo_feed(sandbox_env, auth="api_key"))
    probe_credentials(crmcom_feed(sandbox_env))
    after = stats(sandbox_env)
    assert after["events_accepted"] == 0 and after["auth_failures"] == 0


@pytest.mark.parametrize(
    ("variable", "value", "hint"),
    [
        ("ANTAVO_API_SECRET", "wrong", "the API secret does not match the key: check target.api_secret_env"),
        ("ANTAVO_API_KEY", "nobody", "the API key is unknown to the platform: check target.api_key_env"),
    ],
)
def test_a_refusal_says_which_credential(
    sandbox_env: SandboxServer, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, hint: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(CredentialsRefusedError, match=hint) as caught:
        probe_credentials(antavo_feed(sandbox_env))
    assert caught.value.exit_code == 78 and "HTTP 401" in str(caught.value)
    assert value not in str(caught.value)  # never the secret itself


def test_unsigned_requests_refused_say_so(sandbox_env: SandboxServer) -> None:
    sandbox_env.config.allow_api_key = False
    with pytest.raises(CredentialsRefusedError, match="only accepts signed requests"):
        probe_credentials(antavo_feed(sandbox_env, auth="api_key"))


def test_crmcom_refused_password(sandbox_env: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMCOM_PASSWORD", "wrong")
    with pytest.raises(CredentialsRefusedError, match="refused our credentials"):
        probe_credentials(crmcom_feed(sandbox_env))


def test_missing_secret_before_any_request(
    sandbox_env: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTAVO_API_SECRET")
    with pytest.raises(SecretError, match="ANTAVO_API_SECRET"):
        probe_credentials(antavo_feed(sandbox_env))
    assert stats(sandbox_env)["requests"] == 0


def test_a_wrong_address_is_configuration(sandbox_env: SandboxServer) -> None:
    with pytest.raises(ConfigError, match=r"target.base_url: .* answered 404"):
        probe_credentials(antavo_feed(sandbox_env, base_url=sandbox_env.url + "/nothing-here"))


@pytest.mark.parametrize("attempts", [1, 2])
def test_unreachable_after_the_attempts_says_why(sandbox_env: SandboxServer, attempts: int) -> None:
    """"(credential check, 1 attempt)", "(credential check, 2 attempts)": never "attempt(s)"."""
    feed = antavo_feed(sandbox_env, base_url=f"http://127.0.0.1:{free_port()}", max_attempts=attempts)
    words = "1 attempt" if attempts == 1 else "2 attempts"
    with pytest.raises(PlatformUnavailableError, match=r"cannot be reached: connection failed .*"
                       rf"\(credential check, {words}\); nothing was read or recorded: the next run "
                       "tries again"):
        probe_credentials(feed)


def test_a_rate_limited_check_is_temporary(sandbox_env: SandboxServer) -> None:
    sandbox_env.config.requests_per_minute = 1  # a second request this minute is over the limit
    probe_credentials(antavo_feed(sandbox_env))
    with pytest.raises(PlatformUnavailableError, match="HTTP 429"):
        probe_credentials(antavo_feed(sandbox_env, max_attempts=1))


@pytest.mark.parametrize(
    ("name", "samples"),
    [("acme_enrollments", ["members_*"]), ("acme_claims", ["claims_*"]), ("poslog_store", [])],
)
def test_enrollment_claim_and_poslog_feeds_prove_credentials_before_any_file(
    sandbox_env: SandboxServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str,
    samples: list[str],
) -> None:
    drop = tmp_path / "drop"
    copy_samples(drop, samples)
    if name == "poslog_store":
        shutil.copy2(POSLOG_SAMPLE, drop / POSLOG_SAMPLE.name)
    files = sorted(p.name for p in drop.iterdir())
    assert files  # the day's files are there, ready to be read
    feed = sample_feed(name, sandbox_env, folder=drop)
    settings = settings_in(tmp_path)
    monkeypatch.setenv("ANTAVO_API_SECRET", "wrong")

    with pytest.raises(CredentialsRefusedError, match=r"check target\.api_secret_env"):
        run_feed(feed, settings, business_dates=[date(2026, 11, 20)])

    # one request, the check; no run, file or transaction recorded, the files untouched
    assert stats(sandbox_env)["requests"] == 1 and stats(sandbox_env)["events_accepted"] == 0
    if settings.ledger_path.exists():
        with Ledger(settings.ledger_path) as ledger:
            assert ledger.runs() == [] and ledger.files() == []
    assert sorted(p.name for p in drop.iterdir()) == files

    monkeypatch.setenv("ANTAVO_API_SECRET", TARGET_KITS["antavo"].env(sandbox_env)["ANTAVO_API_SECRET"])
    fixed = run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
    assert fixed.summary["rows_in"] > 0 and fixed.summary["balanced"] is True
