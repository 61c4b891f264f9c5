"""Feed configuration: docs in step with the models, and clear errors for bad files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from pipeline.config import (
    AlertsConfig,
    AntavoTarget,
    ClaimsConfig,
    CrmcomTarget,
    EnrollmentsConfig,
    ExpectedFilesConfig,
    Feed,
    FormatConfig,
    LoggingConfig,
    PoslogConfig,
    ResumeConfig,
    SourceConfig,
    ValidationConfig,
    load_feed,
    load_feeds,
)
from pipeline.errors import EXIT_CONFIG, ConfigError

ROOT = Path(__file__).resolve().parent.parent
FEEDS_README = ROOT / "feeds" / "README.md"

SECTIONS: dict[str, tuple[type[BaseModel], ...]] = {
    "source": (SourceConfig,),
    "format": (FormatConfig,),
    "poslog": (PoslogConfig,),
    "validation": (ValidationConfig,),
    "target": (AntavoTarget, CrmcomTarget),
    "alerts": (AlertsConfig,),
    "expected": (ExpectedFilesConfig,),
    "logging": (LoggingConfig,),
    "resume": (ResumeConfig,),
    "enrollments": (EnrollmentsConfig,),
    "claims": (ClaimsConfig,),
}


def model_keys() -> set[str]:
    """Every key a feed file may contain, as `section.key` (top-level keys bare)."""
    keys = {name for name in Feed.model_fields if name not in SECTIONS}
    for section, models in SECTIONS.items():
        assert section in Feed.model_fields, f"Feed has no section {section}"
        for model in models:
            keys |= {f"{section}.{name}" for name in model.model_fields}
    return keys


def documented_keys() -> set[str]:
    """The keys in the first column of feeds/README.md's tables."""
    found = set()
    for line in FEEDS_README.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\|\s*`([a-z_][a-z0-9_.]*)`\s*\|", line)
        if match:
            found.add(match.group(1))
    return found


def test_every_model_key_is_documented() -> None:
    missing = sorted(model_keys() - documented_keys())
    assert not missing, f"document these keys in feeds/README.md (as `section.key` table rows): {missing}"


def test_nothing_documented_is_unknown_to_the_models() -> None:
    unknown = sorted(documented_keys() - model_keys())
    assert not unknown, f"feeds/README.md documents keys the code does not accept: {unknown}"


def test_no_key_is_documented_twice_in_one_table() -> None:
    tables = re.split(r"\n(?!\|)", FEEDS_README.read_text(encoding="utf-8"))  # runs of table lines
    for table in tables:
        keys = re.findall(r"^\|\s*`([a-z_][a-z0-9_.]*)`\s*\|", table, flags=re.MULTILINE)
        twice = sorted({key for key in keys if keys.count(key) > 1})
        assert not twice, f"feeds/README.md has two rows for {twice} in one table"


def documented_defaults() -> list[tuple[str, type[BaseModel], str]]:
    """(key, the model it belongs to, its default column) of every feeds/README.md table row; a
    `target.*` row belongs to the target its section heading names."""
    rows = []
    model: type[BaseModel] | None = None
    for line in FEEDS_README.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            model = CrmcomTarget if "crmcom" in line else AntavoTarget if "antavo" in line else None
        match = re.match(r"^\|\s*`([a-z_][a-z0-9_.]*)`\s*\|\s*([^|]*?)\s*\|", line)
        if match:
            key, default = match.groups()
            section = key.rpartition(".")[0]
            owner = model if section == "target" else SECTIONS[section][0] if section else Feed
            assert owner is not None, f"feeds/README.md: {key} is not under a target's heading"
            rows.append((key, owner, default))
    return rows


def _comparable(value: object) -> object:
    if isinstance(value, tuple | list):
        return [_comparable(v) for v in value]
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, float | int) and not isinstance(value, bool):
        return Decimal(str(value))
    return value


def test_every_documented_default_is_the_models_default() -> None:
    """A default written as a TOML value in feeds/README.md (`600`, `"signed"`, `[".done"]`) or as
    "none" is what the model gives a feed file that leaves the key out."""
    wrong = []
    for key, model, default in documented_defaults():
        if key == "target.kind":  # the kind a [target] without one gets, under either heading
            model = AntavoTarget
        field = model.model_fields[key.rpartition(".")[2]]
        actual = field.get_default(call_default_factory=True)
        if default == "none":
            expected: object = None
        else:
            literal = re.fullmatch(r"`(.+)`", default)
            if literal is None:
                continue  # words: "the file name", "the feed's scope"
            try:
                expected = tomllib.loads(f"v = {literal.group(1)}")["v"]
            except tomllib.TOMLDecodeError:
                continue  # another key's name: `source.pattern`, `base_url`
        if actual is PydanticUndefined or _comparable(expected) != _comparable(actual):
            wrong.append(f"{key} ({model.__name__}): documented {default}, the model says {actual!r}")
    assert not wrong, "feeds/README.md's defaults differ from the code:\n" + "\n".join(wrong)


def test_the_feeds_in_the_repository_load() -> None:
    results = load_feeds(ROOT / "feeds")
    assert results, "no feed files in feeds/"
    assert [str(r.error) for r in results if r.error] == []


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_feed(tmp_path: Path) -> None:
    feed = load_feed(write(tmp_path, "shop.toml", 'timezone = "Europe/London"\n'))
    assert feed.name == "shop"
    assert feed.scope == "shop"
    assert feed.format.kind == "csv"
    assert feed.config_dir == tmp_path


def test_a_target_without_kind_is_antavo(tmp_path: Path) -> None:
    """feeds/README.md: `target.kind` defaults to "antavo", also in a `[target]` table that omits it."""
    feed = load_feed(write(tmp_path, "shop.toml", "[target]\nbase_url = 'http://127.0.0.1:8765'\n"))
    assert isinstance(feed.target, AntavoTarget)
    assert feed.target.kind == "antavo" and feed.target.base_url == "http://127.0.0.1:8765"
    with pytest.raises(ConfigError) as caught:  # an Antavo key's problem, not a missing discriminator
        load_feed(write(tmp_path, "bad.toml", "[target]\nbulk_size = 0\n"))
    assert caught.value.key == "target.bulk_size"
    (tmp_path / "feeds").mkdir()
    write(tmp_path / "feeds", "shop.toml", "[target]\nbase_url = 'http://127.0.0.1:8765'\n")
    done = posfeed("--feeds-dir", str(tmp_path / "feeds"), "feeds", cwd=tmp_path,
                   env={**os.environ, "ANTAVO_API_KEY": "k", "ANTAVO_API_SECRET": "s"})
    assert done.returncode == 0, done.stderr


def test_load_by_name_from_the_feeds_dir(tmp_path: Path) -> None:
    write(tmp_path, "shop.toml", "")
    assert load_feed("shop", tmp_path).name == "shop"


def test_models_are_frozen(tmp_path: Path) -> None:
    feed = load_feed(write(tmp_path, "shop.toml", ""))
    with pytest.raises(ValidationError):
        feed.timezone = "UTC"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[format]\ndelimiter = ';;'\n", "format.delimiter", "at most 1 character"),
        ("[format]\nkind = 'xml'\n", "format.kind", "'csv', 'jsonl', 'parquet' or 'poslog'"),
        ("[source]\nprot = 22\n", "source.prot", "unknown key (did you mean 'port'?"),
        ("timezone = 'Mars/Olympus'\n", "timezone", "unknown timezone"),
        ("[store_timezones]\nS1 = 'Nowhere/City'\n", "store_timezones", "unknown timezone"),
        # the host's own zone file: two hosts on one ledger would read business days differently
        ("timezone = 'localtime'\n", "timezone", "not an IANA timezone"),
        ("[store_timezones]\nS1 = 'posixrules'\n", "store_timezones", "not an IANA timezone"),
        ("[validation]\nmax_future_minutes = -1\n", "validation.max_future_minutes", "greater than or equal"),
        ("[target]\nkind = 'antavo'\nbulk_size = 0\n", "target.bulk_size", "greater than or equal"),
        ("[target]\nkind = 'antavo'\nbase_url = 'http://[bad'\n", "target.base_url", "not a URL"),
        ("[target]\nkind = 'crmcom'\nbase_url = 'ftp://crm.example'\n", "target.base_url", "http:// or https://"),
    ],
)
def test_bad_value_names_file_key_and_problem(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path, "bad.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_feed(path)
    error = caught.value
    assert error.source == str(path)
    assert error.key == key
    assert problem in error.problem
    assert str(path) in str(error) and key in str(error)
    assert error.exit_code == EXIT_CONFIG


def test_every_bad_value_of_a_file_is_named(tmp_path: Path) -> None:
    """Three mistakes in one file: all three named with their keys, not "(and 2 more)"."""
    (tmp_path / "feeds").mkdir()
    text = "timezone = 'Mars/Olympus'\n[format]\ndelimiter = ';;'\n[validation]\nmax_future_minutes = -1\n"
    path = write(tmp_path / "feeds", "bad.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_feed(path)
    assert caught.value.key == "timezone" and "more)" not in str(caught.value)
    for key, problem in [("timezone", "unknown timezone"), ("format.delimiter", "at most 1 character"),
                         ("validation.max_future_minutes", "greater than or equal")]:
        assert re.search(rf"{re.escape(key)}: [^;]*{problem}", str(caught.value)), str(caught.value)
    done = posfeed("--feeds-dir", str(tmp_path / "feeds"), "feeds", cwd=tmp_path)
    assert done.returncode == EXIT_CONFIG
    assert "format.delimiter" in done.stderr and "validation.max_future_minutes" in done.stderr


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ("[source]\nkind = 'sftp'\nhostname = 'x'\n", "source.hostname", "did you mean 'host'?"),
        ("[target]\nkind = 'antavo'\napi_key = 'x'\n", "target.api_key", "did you mean 'api_key_env'?"),
        ("[target]\nkind = 'crmcom'\norganisation = 'x'\n", "target.organisation",
         "did you mean 'organisation_env'?"),
        ("[formt]\nkind = 'csv'\n", "formt", "did you mean 'format'?"),
        ("[source]\nwhatever = 1\n", "source.whatever", "unknown key (feeds/README.md lists every key)"),
    ],
)
def test_an_unknown_key_is_named_with_the_key_it_may_mean(
    tmp_path: Path, text: str, key: str, hint: str
) -> None:
    """A misspelt key is told as such, with the closest key of its table, not as pydantic's
    "Extra inputs are not permitted"."""
    with pytest.raises(ConfigError) as caught:
        load_feed(write(tmp_path, "bad.toml", text))
    assert caught.value.key == key and hint in caught.value.problem, str(caught.value)
    assert "Extra inputs" not in str(caught.value)


@pytest.mark.parametrize("table", ["columns", "defaults"])
def test_a_checkout_feed_mapping_a_name_that_is_not_canonical_is_refused(tmp_path: Path, table: str) -> None:
    """`transaction = "TicketNo"` would leave transaction_id unmapped: every file of the feed
    unreadable and quarantined. The feed file is refused instead, naming the key it may mean."""
    with pytest.raises(ConfigError) as caught:
        load_feed(write(tmp_path, "bad.toml", f"[format.{table}]\ntransaction = 'TicketNo'\n"))
    assert caught.value.key == f"format.{table}.transaction"
    assert "not a canonical column" in caught.value.problem
    assert "did you mean 'transaction_id'?" in caught.value.problem
    # a column a transaction_id_template names, and an enrollment's custom property, are fine
    load_feed(write(tmp_path, "tpl.toml", "[format]\ntransaction_id_template = '{store_id}-{receipt}'\n"
                    "[format.columns]\nreceipt = 'Bon'\n"))
    load_feed(write(tmp_path, "members.toml", "records = 'enrollments'\n[format.columns]\n"
                    "favourite_store = 'FavShop'\n"))


def test_an_unknown_target_kind_is_told_at_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_feed(write(tmp_path, "bad.toml", "[target]\nkind = 'antvo'\n"))
    assert caught.value.key == "target.kind"
    assert caught.value.problem == "should be one of 'antavo', 'crmcom', not 'antvo'"


def test_an_sftp_source_without_its_server_or_login_is_told_by_posfeed_feeds(tmp_path: Path) -> None:
    """What an sftp source needs is known from the file: `posfeed feeds` says so, all at once,
    rather than a run telling one missing key after another."""
    write(tmp_path, "shop.toml", "[source]\nkind = 'sftp'\npath = '/exports'\n")
    done = posfeed("--feeds-dir", str(tmp_path), "feeds", cwd=tmp_path)
    assert done.returncode == EXIT_CONFIG, done.stdout
    assert ("source: an sftp source needs host, username and a credential (private_key_file or "
            "password_env); missing: host, username, private_key_file or password_env") in done.stderr
    load_feed(write(tmp_path, "ok.toml", "[source]\nkind = 'sftp'\nhost = 'h'\nusername = 'u'\n"
                    "password_env = 'P'\n"))


def test_a_bad_schedule_is_told_without_pydantic_words(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_feed(write(tmp_path, "bad.toml", "schedule = 'every hour'\n"))
    assert caught.value.key == "schedule" and "not a 5-field cron expression" in caught.value.problem
    assert "Value error" not in str(caught.value)


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.toml", "timezone = \n")
    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load_feed(path)
    assert caught.value.source == str(path)
    assert "line 1" in caught.value.problem


def test_unknown_feed_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no feed named 'nope'"):
        load_feed("nope", tmp_path)


def test_load_feeds_keeps_errors_beside_good_feeds(tmp_path: Path) -> None:
    write(tmp_path, "a_good.toml", "")
    write(tmp_path, "b_bad.toml", "[format]\nencoding = 'ebcdic'\n")
    results = load_feeds(tmp_path)
    assert [r.path.name for r in results] == ["a_good.toml", "b_bad.toml"]
    assert results[0].feed is not None and results[0].error is None
    assert results[1].feed is None and results[1].error is not None
    assert results[1].error.key == "format.encoding"


def posfeed(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_posfeed_feeds_names_the_variables_a_run_reads_that_are_not_set(tmp_path: Path) -> None:
    """Before the first scheduled run, `posfeed feeds` says which variables the feeds' `*_env` keys
    name that are not set (never a value), and exits 78 for an enabled feed's, as a run would."""
    write(tmp_path, "shop.toml", "[source]\npath = 'shop'\n"
                                 "[target]\napi_key_env = 'SHOP_KEY'\napi_secret_env = 'SHOP_SECRET'\n"
                                 "[alerts]\nwebhook_url_env = 'SHOP_HOOK'\n")
    write(tmp_path, "crm.toml",
          "[target]\nkind = 'crmcom'\nauth = 'web_api_key'\nweb_api_key_env = 'CRM_KEY'\n")
    write(tmp_path, "filed.toml", "[source]\npath = 'filed'\n"
                                  "[target]\napi_key_env = 'CRM_KEY'\napi_secret_env = 'FILED_SECRET'\n"
                                  "api_secret_file = 'secret.txt'\n")
    (tmp_path / "secret.txt").write_text("file-secret-value\n", encoding="utf-8")
    write(tmp_path, "old.toml",
          "enabled = false\n[source]\npath = 'old'\n"
          "[target]\napi_key_env = 'OLD_KEY'\napi_secret_env = 'CRM_KEY'\n")
    values = {"SHOP_SECRET": "shop-secret-value", "CRM_KEY": "crm-key-value"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSFEED_", "ANTAVO_", "CRMCOM_"))}

    def feeds(*args: str) -> subprocess.CompletedProcess[str]:
        return posfeed("--feeds-dir", str(tmp_path), "feeds", *args, cwd=tmp_path, env={**env, **values})

    done = feeds()
    assert done.returncode == EXIT_CONFIG, done.stdout + done.stderr
    shown = done.stdout + done.stderr
    assert all(value not in shown for value in [*values.values(), "file-secret-value"])
    assert re.search(r"SHOP_KEY +target\.api_key_env +shop\b", done.stdout), done.stdout
    assert re.search(r"SHOP_HOOK +alerts\.webhook_url_env +shop\b", done.stdout), done.stdout
    assert re.search(r"OLD_KEY +target\.api_key_env +old \(disabled\)", done.stdout), done.stdout
    assert "SHOP_SECRET" not in done.stdout and "FILED_SECRET" not in done.stdout  # set, or its file read
    assert "CRMCOM_" not in shown  # a Web API key login reads no user name or password
    assert "SHOP_HOOK" in done.stderr and "SHOP_KEY" in done.stderr and "OLD_KEY" not in done.stderr

    rows = {r["name"]: r for r in json.loads(feeds("--json").stdout)}
    assert rows["shop"]["env"] == [
        {"key": "target.api_key_env", "variable": "SHOP_KEY", "status": "missing"},
        {"key": "target.api_secret_env", "variable": "SHOP_SECRET", "status": "set"},
        {"key": "alerts.webhook_url_env", "variable": "SHOP_HOOK", "status": "missing"},
    ]
    assert rows["crm"]["env"] == [{"key": "target.web_api_key_env", "variable": "CRM_KEY", "status": "set"}]
    assert rows["filed"]["env"][1] == {"key": "target.api_secret_env", "variable": "FILED_SECRET",
                                       "status": "file"}

    values.update(SHOP_KEY="shop-key-value", SHOP_HOOK="https://hooks.example/x")
    ready = feeds()  # only the disabled feed lacks one: listed, and no reason to fail
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert "OLD_KEY" in ready.stdout and "SHOP_KEY" not in ready.stdout


def test_posfeed_feeds_exits_78_naming_file_key_and_problem(tmp_path: Path) -> None:
    write(tmp_path, "good.toml", "schedule = '5 * * * *'\n[source]\npath = 'in'\n")
    bad = write(tmp_path, "bad.toml", "[validation]\namount_tolerance = 'lots'\n")
    done = posfeed("--feeds-dir", str(tmp_path), "feeds", cwd=tmp_path)
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert str(bad) in done.stderr
    assert "validation.amount_tolerance" in done.stderr
    assert "good" in done.stdout

    as_json = posfeed("--feeds-dir", str(tmp_path), "feeds", "--json", cwd=tmp_path)
    assert as_json.returncode == EXIT_CONFIG
    rows = {r["name"]: r for r in json.loads(as_json.stdout)}
    assert rows["good"]["ok"] is True
    assert rows["good"]["schedule"] == "5 * * * *"
    assert rows["bad"]["ok"] is False
    assert rows["bad"]["error"]["key"] == "validation.amount_tolerance"


# ---- hostile and careless values: refused when the feed loads, naming the key and why

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        # names and scopes become folder and lock names: nothing empty, blank, path-like or unprintable
        ("name = ''\n", "name", "empty"),
        ("name = '   '\n", "name", "empty"),
        ("name = '../evil'\n", "name", "path separator"),
        ("name = '..'\n", "name", "path separator"),
        ("name = \"a\\nb\"\n", "name", "control character"),
        ("name = ' shop'\n", "name", "blanks"),
        (f"name = '{'x' * 300}'\n", "name", "longer than 100"),
        ("dedup_scope = ''\n", "dedup_scope", "empty"),
        ("dedup_scope = 'a/b'\n", "dedup_scope", "path separator"),
        ("records = 'claims'\n[claims]\ncheckout_scope = ' '\n", "claims.checkout_scope", "empty"),
        ("records = 'claims'\n[claims]\nenrollment_scope = '../x'\n", "claims.enrollment_scope",
         "path separator"),
        # credentials never live in a URL of the feed file (they would reach logs and reports)
        (f"[target]\nbase_url = 'https://user:{SECRET}@api.example'\n", "target.base_url", "credentials"),
        (f"[target]\nread_api_url = 'https://user:{SECRET}@api.example'\n", "target.read_api_url",
         "credentials"),
        (f"[target]\nkind = 'crmcom'\nbase_url = 'https://{SECRET}@crm.example'\n", "target.base_url",
         "credentials"),
        ("[alerts]\nwebhook_url = 'file:///etc/passwd'\n", "alerts.webhook_url", "http:// or https://"),
        ("[alerts]\nwebhook_url = ''\n", "alerts.webhook_url", "http:// or https://"),
        # floats are finite, waits and timeouts bounded (a run would sleep for years)
        ("[target]\ntimeout_seconds = inf\n", "target.timeout_seconds", "finite"),
        ("[target]\ntimeout_seconds = 1e9\n", "target.timeout_seconds", "less than or equal"),
        ("[target]\nbackoff_max_seconds = inf\n", "target.backoff_max_seconds", "finite"),
        ("[target]\nbackoff_base_seconds = 60\nbackoff_max_seconds = 1\n", "target",
         "backoff_base_seconds must not be more than backoff_max_seconds"),
        ("[target]\nreadback_wait_seconds = inf\n", "target.readback_wait_seconds", "finite"),
        ("[target]\nmax_attempts = 1000000000\n", "target.max_attempts", "less than or equal"),
        ("[target]\nkind = 'crmcom'\ntoken_ttl_seconds = inf\n", "target.token_ttl_seconds", "finite"),
        ("[target]\nkind = 'crmcom'\ntoken_ttl_seconds = 10\n", "target",
         "token_renew_margin_seconds must be less than token_ttl_seconds"),
        ("[source]\nstable_seconds = nan\n", "source.stable_seconds", "finite"),
        ("[source]\nstable_seconds = inf\n", "source.stable_seconds", "finite"),
        ("[source]\nstable_seconds = 1e9\n", "source.stable_seconds", "less than or equal"),
        ("[source]\nread_timeout = inf\n", "source.read_timeout", "finite"),
        ("[source]\nfetch_attempts = 1000000000\n", "source.fetch_attempts", "less than or equal"),
        ("[alerts]\nbacklog_max_age_minutes = inf\n", "alerts.backlog_max_age_minutes", "finite"),
        ("[alerts]\nbacklog_max_age_minutes = 300\nbacklog_escalate_minutes = 10\n", "alerts",
         "backlog_escalate_minutes must not be less than backlog_max_age_minutes"),
        ("[resume]\nmax_age_hours = inf\n", "resume.max_age_hours", "finite"),
        # huge ages and allowances overflow date arithmetic mid-run (an internal error, not a refusal)
        ("[resume]\nmax_age_hours = 1e9\n", "resume.max_age_hours", "less than or equal"),
        ("[validation]\nmax_future_minutes = 10000000000000\n", "validation.max_future_minutes",
         "less than or equal"),
        ("[expected]\ncadence = 'daily'\nlate_after_minutes = 1000000000000\n", "expected.late_after_minutes",
         "less than or equal"),
        ("[expected]\nescalate_after_minutes = 1000000000000\n", "expected.escalate_after_minutes",
         "less than or equal"),
        ("[alerts]\nbacklog_max_age_minutes = 1e15\nbacklog_escalate_minutes = 1e16\n",
         "alerts.backlog_max_age_minutes", "less than or equal"),
        ("[source]\nkind = 'sftp'\nhost = 'h'\nusername = 'u'\npassword_env = 'P'\n"
         "keepalive_seconds = 100000000000000000000\n", "source.keepalive_seconds", "less than or equal"),
        ("[target]\nretry_after_max_seconds = 1e300\n", "target.retry_after_max_seconds",
         "less than or equal"),
        # suffixes and patterns that would silently read nothing (or everything)
        ("[source]\nignore_suffixes = ['.tmp', '']\n", "source.ignore_suffixes", "empty suffix"),
        ("[source]\nreadiness = 'marker'\nmarker_suffixes = ['']\n", "source.marker_suffixes",
         "empty suffix"),
        ("[source]\nreadiness = 'marker'\nmarker_suffixes = []\n", "source", "needs at least one"),
        ("[source]\npattern = ''\n", "source.pattern", "empty"),
        ("[source]\npattern = '../*.csv'\n", "source.pattern", "path separator"),
        ("[source]\npattern = 'in/*.csv'\n", "source.pattern", "path separator"),
        ("[source]\npattern = '{store}_*.csv'\n", "source.pattern", "placeholder"),
        ("[source]\npattern = '{store_id}_*.csv'\n", "source.pattern", "placeholder"),
        ("[source]\npattern = 'pos_{business_date:%Y%m%d.csv'\n", "source.pattern", "placeholder"),
        ("[expected]\ncadence = 'daily'\npattern = 'x/{business_date:%Y%m%d}.csv'\n", "expected.pattern",
         "path separator"),
        ("[source]\nkind = 'sftp'\nhost = ' '\nusername = 'u'\npassword_env = 'P'\n", "source",
         "missing: host"),
        # a schedule that never fires, allowed values that allow nothing
        ("schedule = '0 0 31 2 *'\n", "schedule", "never fires"),
        ("[validation]\ncurrencies = []\n", "validation.currencies", "empty"),
        ("[validation]\namount_tolerance = -0.01\n", "validation.amount_tolerance", "greater than or equal"),
        ("[source]\npath = ''\n", "source.path", "empty"),
        ("[source]\npath = '  '\n", "source.path", "empty"),
        ("[validation]\ncurrencies = ['GBP', 'pounds']\n", "validation.currencies", "not an ISO 4217"),
        ("[format]\ndelimiter = '\"'\n", "format", "delimiter and quote_char must differ"),
        ("[format]\ntransaction_id_template = '{store_id'\n", "format.transaction_id_template",
         "bad template"),
        ("[format]\ntransaction_id_template = '{store_id!r}-{receipt}'\n", "format.transaction_id_template",
         "format spec or conversion"),
        ("[format]\ntransaction_id_template = 'TX-1'\n", "format.transaction_id_template", "no {field}"),
        ("[source]\nkind = 'sftp'\nhost = 'user:pw@sftp.example'\nusername = 'u'\npassword_env = 'P'\n",
         "source.host", "a host name only"),
        ("[format]\ndelimiter = \"\\n\"\n", "format.delimiter", "line break"),
    ],
)
def test_a_hostile_value_is_refused_naming_its_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path, "bad.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_feed(path)
    error = caught.value
    assert error.source == str(path)
    assert error.key == key, str(error)
    assert problem in error.problem, str(error)
    assert SECRET not in str(error) and "Value error" not in str(error)


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ("path = 'in'\nafter_success = 'archive'\narchive_path = '.'\n", "source.archive_path"),
        ("path = 'in'\nafter_success = 'archive'\narchive_path = '../in'\n", "source.archive_path"),
        ("path = 'in'\nafter_success = 'archive'\narchive_path = '{abs}'\n", "source.archive_path"),
        ("path = 'in'\nafter_success = 'delete'\nquarantine_path = './'\n", "source.quarantine_path"),
        ("path = 'link'\nafter_success = 'archive'\narchive_path = '{abs}'\n", "source.archive_path"),
        ("kind = 'sftp'\nhost = 'h'\nusername = 'u'\npassword_env = 'P'\npath = '/exports'\n"
         "after_success = 'archive'\narchive_path = '/exports/./'\n", "source.archive_path"),
    ],
)
def test_archive_or_quarantine_in_the_source_folder_itself_is_refused(
    tmp_path: Path, source: str, key: str
) -> None:
    """Archiving into the folder read would leave every file there (renamed `.1`), read again."""
    (tmp_path / "in").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "in")
    text = "[source]\n" + source.replace("{abs}", str(tmp_path / "in"))
    with pytest.raises(ConfigError) as caught:
        load_feed(write(tmp_path, "bad.toml", text))
    assert caught.value.key == key and "the source folder itself" in caught.value.problem, str(caught.value)


def test_credentials_in_a_url_never_reach_posfeed_feeds_output(tmp_path: Path) -> None:
    write(tmp_path, "shop.toml", f"[target]\nbase_url = 'https://user:{SECRET}@api.example'\n")
    for args in (("feeds",), ("feeds", "--json")):
        done = posfeed("--feeds-dir", str(tmp_path), *args, cwd=tmp_path)
        assert done.returncode == EXIT_CONFIG, done.stdout
        assert "target.base_url" in done.stderr + done.stdout and "Traceback" not in done.stderr
        assert SECRET not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("one", "other", "key", "problem"),
    [
        ("dedup_scope = 'shop'\n", "name = 'a'\ndedup_scope = 'shop'\n", "name", "also the name of"),
        ("dedup_scope = 'acme'\n", "dedup_scope = 'acme'\n[target]\nbase_url = 'http://127.0.0.1:9999'\n",
         "dedup_scope", "another target"),
        ("dedup_scope = 'acme'\n", "dedup_scope = 'acme'\n[target]\nkind = 'crmcom'\n", "dedup_scope",
         "another target"),
        ("dedup_scope = 'acme'\n", "dedup_scope = 'acme'\nrecords = 'enrollments'\n", "dedup_scope",
         "other records"),
    ],
)
def test_feeds_that_clash_across_files_are_refused(
    tmp_path: Path, one: str, other: str, key: str, problem: str
) -> None:
    """Two feeds of one name, or one dedup scope sending to two targets (a transaction sent by one
    would never reach the other's platform), refuse both files; the other feeds still load."""
    write(tmp_path, "a.toml", one)
    write(tmp_path, "b.toml", other)
    write(tmp_path, "c.toml", "[source]\npath = 'c'\n")  # its own files, its own scope
    results = {r.path.name: r for r in load_feeds(tmp_path)}
    assert results["c.toml"].feed is not None
    for name, peer in (("a.toml", "b.toml"), ("b.toml", "a.toml")):
        error = results[name].error
        assert results[name].feed is None and error is not None, name
        assert error.key == key and problem in error.problem and peer in error.problem, str(error)
    done = posfeed("--feeds-dir", str(tmp_path), "feeds", cwd=tmp_path)
    assert done.returncode == EXIT_CONFIG and "Traceback" not in done.stderr
    assert str(tmp_path / "a.toml") in done.stderr and str(tmp_path / "b.toml") in done.stderr
    # feeds of one scope and one target are the documented way (hourly and daily exports)
    write(tmp_path, "b.toml", one)
    assert all(r.error is None for r in load_feeds(tmp_path))


def test_a_feed_run_by_name_is_refused_when_it_clashes_with_another_file(tmp_path: Path) -> None:
    """`posfeed run --feed a` loads one file, but its scope's clash with b.toml is the same: refused
    (78) naming the file, the key and the other file, before anything is read or sent."""
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    write(feeds, "a.toml", "dedup_scope = 'acme'\n[source]\npath = 'in'\n")
    write(feeds, "b.toml", "dedup_scope = 'acme'\n[target]\nkind = 'crmcom'\n")
    done = posfeed("--feeds-dir", str(feeds), "--state-dir", str(tmp_path / "state"), "run", "--feed", "a",
                   "--dry-run", cwd=tmp_path)
    assert done.returncode == EXIT_CONFIG, done.stdout + done.stderr
    assert str(feeds / "a.toml") in done.stderr and "dedup_scope" in done.stderr and "b.toml" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_feed_file_run_by_its_path_outside_the_folder_is_not_held_against_it(tmp_path: Path) -> None:
    """A variant of a feed tried from another folder (its own platform, often its own state
    folder) is not refused because the feeds folder holds a feed of that scope elsewhere."""
    feeds, trial = tmp_path / "feeds", tmp_path / "trial"
    feeds.mkdir()
    trial.mkdir()
    (tmp_path / "in").mkdir()
    write(feeds, "b.toml", "dedup_scope = 'acme'\n[target]\nkind = 'crmcom'\n")
    write(trial, "a.toml", f"dedup_scope = 'acme'\n[source]\npath = '{tmp_path / 'in'}'\n")
    done = posfeed("--feeds-dir", str(feeds), "--state-dir", str(tmp_path / "state"), "run", "--feed",
                   str(trial / "a.toml"), "--dry-run", cwd=tmp_path, env={**os.environ, "ANTAVO_API_KEY": "k",
                                                                         "ANTAVO_API_SECRET": "s"})
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_feed_refused_for_a_clash_still_has_its_secrets_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Secrets of every feed file that parses are masked from the start, clash or not: the
    file may still be run by path."""
    from pipeline.config import register_env_secrets_of_feeds
    from pipeline.logs import REDACTED, redact

    monkeypatch.setenv("T_CLASH_SECRET", "clash-secret-5521")
    write(tmp_path, "a.toml", "dedup_scope = 'acme'\n[target]\napi_secret_env = 'T_CLASH_SECRET'\n")
    write(tmp_path, "b.toml", "dedup_scope = 'acme'\n[target]\nkind = 'crmcom'\n")
    assert all(r.error is not None for r in load_feeds(tmp_path))
    register_env_secrets_of_feeds(tmp_path)
    assert redact("x clash-secret-5521 y") == f"x {REDACTED} y"


def _env_keys() -> list[str]:
    """Every `*_env` key a feed file may hold, as `section.key`."""
    return sorted(key for key in model_keys() if key.endswith("_env"))


def _with_key(key: str, value: str) -> str:
    """A feed file setting ``key`` (its section made valid around it: an sftp source, a CRM.COM target)."""
    section, name = key.split(".")
    head = {"source": "kind = 'sftp'\nhost = 'h'\nusername = 'u'\nprivate_key_file = 'k'\n",
            "target": "kind = 'crmcom'\n" if name not in AntavoTarget.model_fields else "",
            "alerts": ""}[section]
    return f"[{section}]\n{head}{name} = {value!r}\n"


@pytest.mark.parametrize("value", ["", "   "])
@pytest.mark.parametrize("key", _env_keys())
def test_a_blank_env_key_is_refused_when_the_feed_loads(tmp_path: Path, key: str, value: str) -> None:
    """A `*_env` key naming no variable would pass `posfeed feeds` and fail only mid-run."""
    path = write(tmp_path, "bad.toml", _with_key(key, value))
    with pytest.raises(ConfigError) as caught:
        load_feed(path)
    error = caught.value
    assert error.key == key and "names no environment variable" in error.problem, str(error)


def test_posfeed_feeds_refuses_a_blank_env_key(tmp_path: Path) -> None:
    bad = write(tmp_path, "shop.toml", "[target]\napi_key_env = ''\n")
    done = posfeed("--feeds-dir", str(tmp_path), "feeds", cwd=tmp_path)
    assert done.returncode == EXIT_CONFIG, done.stdout + done.stderr
    assert str(bad) in done.stderr and "target.api_key_env" in done.stderr, done.stderr
    assert "names no environment variable" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "source",
    [
        "path = 'in'\nafter_success = 'archive'\narchive_path = 'held'\nquarantine_path = 'held'\n",
        "path = 'in'\nafter_success = 'archive'\narchive_path = 'held'\nquarantine_path = './held/'\n",
        "path = 'in'\nafter_success = 'archive'\narchive_path = '{abs}/held'\nquarantine_path = 'held'\n",
        "path = 'in'\nafter_success = 'archive'\narchive_path = 'held'\nquarantine_path = 'held/bad'\n",
        "path = 'in'\nafter_success = 'archive'\narchive_path = 'quarantine/done'\n",
        "path = 'in'\nafter_success = 'archive'\nquarantine_path = 'archive'\n",
        "kind = 'sftp'\nhost = 'h'\nusername = 'u'\npassword_env = 'P'\npath = '/exports'\n"
        "after_success = 'archive'\narchive_path = '/exports/held'\nquarantine_path = 'held'\n",
        "kind = 'sftp'\nhost = 'h'\nusername = 'u'\npassword_env = 'P'\npath = '/exports'\n"
        "after_success = 'archive'\narchive_path = 'held/q/..'\nquarantine_path = 'held/bad'\n",
    ],
)
def test_archive_and_quarantine_in_one_folder_are_refused(tmp_path: Path, source: str) -> None:
    """Archived and quarantined files in one folder (or one inside the other) would mix: `posfeed
    release` and an operator sorting them could take one for the other."""
    (tmp_path / "in").mkdir()
    text = "[source]\n" + source.replace("{abs}", str(tmp_path / "in"))
    with pytest.raises(ConfigError) as caught:
        load_feed(write(tmp_path, "bad.toml", text))
    error = caught.value
    assert error.key == "source.quarantine_path" and "archive" in error.problem, str(error)
    done = posfeed("--feeds-dir", str(tmp_path), "feeds", cwd=tmp_path)
    assert done.returncode == EXIT_CONFIG and "source.quarantine_path" in done.stderr, done.stderr


def test_archive_and_quarantine_side_by_side_load(tmp_path: Path) -> None:
    """Folders that only share a prefix of their names (`held`, `held2`) are two folders."""
    write(tmp_path, "ok.toml", "[source]\npath = 'in'\nafter_success = 'archive'\narchive_path = 'held'\n"
                               "quarantine_path = 'held2'\n")
    assert load_feed(tmp_path / "ok.toml").source.quarantine_path == "held2"


@pytest.mark.parametrize("region", ["", "   ", " demo", "demo/api"])
def test_a_blank_or_malformed_antavo_region_is_refused(tmp_path: Path, region: str) -> None:
    """The region is the first part of the signature's credential scope (`<region>/api/antavo_request`):
    a blank one, or one with blanks or a `/`, makes every signed request refused by the platform."""
    bad = write(tmp_path, "shop.toml", f"[target]\nregion = {region!r}\n")
    done = posfeed("--feeds-dir", str(tmp_path), "feeds", cwd=tmp_path)
    assert done.returncode == EXIT_CONFIG, done.stdout + done.stderr
    assert str(bad) in done.stderr and "target.region" in done.stderr and "credential scope" in done.stderr


SFTP = "kind = 'sftp'\nhost = 'sftp.example'\nusername = 'u'\npassword_env = 'P'\n"
IN = "[source]\npath = 'in'\n"  # a local source reading tmp_path/in


@pytest.mark.parametrize(
    ("one", "other"),
    [
        # one target, two scopes: each scope sends the files' transactions once, so twice in all
        (IN, IN),
        (IN + "pattern = 'pos_*.csv'\n", "[source]\npath = './in/'\npattern = '*_S1_*.csv'\n"),
        (IN + "pattern = 'pos_{business_date:%Y%m%d}.csv'\n",
         "[source]\npath = '{abs}'\npattern = 'pos_2026*.csv'\n"),
        (f"[source]\n{SFTP}path = '/exports'\n",
         f"[source]\n{SFTP}path = '/exports/./'\npattern = 'a*.csv'\n"),
        # two targets, but a source that moves its files away: the other feed would miss them
        (IN + "after_success = 'archive'\n", IN + "[target]\nkind = 'crmcom'\n"),
        # other records: each would read the other's files as its own
        (IN, "records = 'enrollments'\n" + IN),
    ],
)
def test_feeds_of_two_scopes_reading_the_same_files_are_refused(tmp_path: Path, one: str, other: str) -> None:
    """Feeds of two dedup scopes whose sources overlap (one folder, patterns that can match one
    name) would each take the other's files: the platform gets each transaction twice."""
    (tmp_path / "in").mkdir()
    write(tmp_path, "a.toml", one.replace("{abs}", str(tmp_path / "in")))
    write(tmp_path, "b.toml", other.replace("{abs}", str(tmp_path / "in")))
    write(tmp_path, "c.toml", "[source]\npath = 'elsewhere'\n")
    results = {r.path.name: r for r in load_feeds(tmp_path)}
    assert results["c.toml"].feed is not None
    for name, peer in (("a.toml", "b.toml"), ("b.toml", "a.toml")):
        error = results[name].error
        assert results[name].feed is None and error is not None, name
        assert error.key == "source.pattern" and "same files" in error.problem, error
        assert peer in error.problem, error
    done = posfeed("--feeds-dir", str(tmp_path), "feeds", cwd=tmp_path)
    assert done.returncode == EXIT_CONFIG and "Traceback" not in done.stderr
    assert str(tmp_path / "a.toml") in done.stderr and str(tmp_path / "b.toml") in done.stderr


@pytest.mark.parametrize(
    ("one", "other"),
    [
        # the documented fan-out: the same kept files sent to two platforms, a scope each
        (IN, IN + "[target]\nkind = 'crmcom'\n"),
        # one scope: the ledger sends each transaction once whichever feed reads it
        ("dedup_scope = 'x'\n" + IN, "dedup_scope = 'x'\n" + IN),
        # patterns that never match one name
        (IN + "pattern = 'pos_*_??.csv'\n", IN + "pattern = 'pos_*_daily.csv'\n"),
        (IN + "pattern = 'sales_{business_date:%Y%m%d}.csv'\n",
         IN + "pattern = 'sales_{business_date:%Y%m%d}_web.csv'\n"),
        (IN + "pattern = '[ab]*.csv'\n", IN + "pattern = 'c*.csv'\n"),
        # other folders, other servers
        (IN, "[source]\npath = 'in/sub'\n"),
        (f"[source]\n{SFTP}path = '/exports'\n",
         f"[source]\n{SFTP.replace('sftp.example', 'other.example')}path = '/exports'\n"),
    ],
)
def test_feeds_whose_sources_do_not_overlap_load(tmp_path: Path, one: str, other: str) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    write(tmp_path, "a.toml", one)
    write(tmp_path, "b.toml", other)
    assert [str(r.error) for r in load_feeds(tmp_path) if r.error] == []
