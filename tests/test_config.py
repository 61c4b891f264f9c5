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
    write(tmp_path, "shop.toml", "[target]\napi_key_env = 'SHOP_KEY'\napi_secret_env = 'SHOP_SECRET'\n"
                                 "[alerts]\nwebhook_url_env = 'SHOP_HOOK'\n")
    write(tmp_path, "crm.toml",
          "[target]\nkind = 'crmcom'\nauth = 'web_api_key'\nweb_api_key_env = 'CRM_KEY'\n")
    write(tmp_path, "filed.toml", "[target]\napi_key_env = 'CRM_KEY'\napi_secret_env = 'FILED_SECRET'\n"
                                  "api_secret_file = 'secret.txt'\n")
    (tmp_path / "secret.txt").write_text("file-secret-value\n", encoding="utf-8")
    write(tmp_path, "old.toml",
          "enabled = false\n[target]\napi_key_env = 'OLD_KEY'\napi_secret_env = 'CRM_KEY'\n")
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
