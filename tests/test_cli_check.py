"""`posfeed check` and `posfeed feeds` end to end, and the reject code table in docs/REPORTS.md."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.core.rejects import CATALOG, readme_table
from pipeline.errors import EXIT_CONFIG, EXIT_DATA, EXIT_OK
from pipeline.logs import mask_customer_id
from tests.core.helpers import csv_text, row

ROOT = Path(__file__).resolve().parent.parent
SUMMARY_KEYS = {
    "rows_in",
    "transactions_in",
    "transactions_valid",
    "transactions_rejected",
    "rows_rejected",
    "rejects_by_code",
    "duplicates",
    "conflicts",
    "amount_in",
    "amount_valid",
    "amount_rejected",
}


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout


def test_docs_reject_codes_table_is_the_catalog() -> None:
    text = (ROOT / "docs" / "REPORTS.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- reject-codes:start -->\n(.*?)\n<!-- reject-codes:end -->", text, re.S)
    assert match, "docs/REPORTS.md lacks the reject-codes block"
    assert match.group(1) == readme_table(), (
        "regenerate docs/REPORTS.md's table from pipeline.core.rejects.readme_table()"
    )


def test_clean_canonical_file_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "pos.csv"
    path.write_text(csv_text([row(), row(transaction_id="T2", customer_id="")]))
    code, out = invoke("check", str(path), "--json")
    assert code == EXIT_OK
    summary = json.loads(out)
    assert set(summary) >= SUMMARY_KEYS
    assert summary["transactions_valid"] == 2
    assert summary["guests"] == 1
    assert summary["amount_in"] == "10.00"


@pytest.mark.parametrize("n", [1, 2])
def test_checks_kinds_line_counts_in_words_that_agree(tmp_path: Path, n: int) -> None:
    """"kinds: 1 sale, 1 return (0 unmatched), 1 void (never sent), 1 guest checkout"; with 2,
    "2 sales, 2 returns, 2 voids, 2 guest checkouts": never "1 sales"."""
    rows = []
    for i in range(1, n + 1):
        rows += [row(transaction_id=f"S{i}", customer_id=""),
                 row(transaction_id=f"R{i}", transaction_type="return", quantity="-1", line_total="-2.50",
                     original_transaction_id=f"S{i}", timestamp="2026-11-20 11:00:00"),
                 row(transaction_id=f"V{i}", transaction_type="void", quantity="-2", line_total="-5.00",
                     original_transaction_id=f"S{i}", timestamp="2026-11-20 11:30:00")]
    path = tmp_path / "pos.csv"
    path.write_text(csv_text(rows))
    code, out = invoke("check", str(path))
    assert code == EXIT_OK, out
    kinds = ("1 sale, 1 return (0 unmatched), 1 void (never sent), 1 guest checkout" if n == 1
             else "2 sales, 2 returns (0 unmatched), 2 voids (never sent), 2 guest checkouts")
    assert f"\nkinds: {kinds}\n" in out, out


def test_rejects_exit_65_and_are_written(tmp_path: Path) -> None:
    path = tmp_path / "pos.csv"
    rows = [
        row(),
        row(transaction_id="T2", product_name='=HYPERLINK("x")', quantity="two"),
        row(transaction_id="T2", line_no="2", product_id="P2"),
    ]
    path.write_text(csv_text(rows))
    out_dir = tmp_path / "out"
    code, out = invoke("check", str(path), "--out", str(out_dir))
    assert code == EXIT_DATA
    assert "pos.csv:3 R002_BAD_NUMBER quantity" in out
    with (out_dir / "rejects.csv").open(newline="", encoding="utf-8") as handle:
        rejects = list(csv.DictReader(handle))
    assert [r["reject_code"] for r in rejects] == ["R002_BAD_NUMBER", "R099_SIBLING_REJECTED"]
    assert [r["source_line"] for r in rejects] == ["3", "4"]
    assert rejects[0]["quantity"] == "two"
    assert rejects[0]["product_name"] == '\'=HYPERLINK("x")'  # neutralised for spreadsheets
    assert rejects[0]["source_file"] == "pos.csv"
    checkouts = [json.loads(line) for line in (out_dir / "checkouts.jsonl").read_text().splitlines()]
    assert [c["transaction_id"] for c in checkouts] == ["T1"]
    assert checkouts[0]["total"] == "5.0000"  # decimals as strings, never floats
    assert checkouts[0]["items"][0]["unit_price"] == "2.5000"
    assert pl.read_parquet(out_dir / "checkouts.parquet").schema["total"] == pl.Decimal(38, 4)
    assert pl.read_parquet(out_dir / "checkout_items.parquet").height == 1
    assert json.loads((out_dir / "summary.json").read_text())["rows_rejected"] == 2


def test_conflict_exits_65(tmp_path: Path) -> None:
    hourly, daily = tmp_path / "h.csv", tmp_path / "d.csv"
    hourly.write_text(csv_text([row()]))
    daily.write_text(csv_text([row(quantity="3", line_total="7.50")]))
    code, out = invoke("check", str(hourly), str(daily), "--json")
    assert code == EXIT_DATA
    assert json.loads(out)["conflicts"] == 2


def test_mapped_export_keeps_its_own_column_names(tmp_path: Path) -> None:
    feed = tmp_path / "shop.toml"
    feed.write_text(
        "[format]\ndelimiter = ';'\n[format.columns]\ntransaction_id = 'Bon'\nstore_id = 'Filiale'\n"
        "timestamp = 'Zeit'\nproduct_id = 'Artikel'\nquantity = 'Menge'\nunit_price = 'Preis'\n"
        "[format.defaults]\ncurrency = 'EUR'\n"
    )
    export = tmp_path / "export.csv"
    export.write_text("Bon;Filiale;Zeit;Artikel;Menge;Preis;Kasse\nB1;F1;2026-11-20 10:00;A1;x;1.00;3\n")
    out_dir = tmp_path / "out"
    code, _ = invoke("check", str(export), "--feed", str(feed), "--out", str(out_dir))
    assert code == EXIT_DATA
    header = (out_dir / "rejects.csv").read_text().splitlines()[0].split(",")
    # exactly the export's columns in its order (the defaulted currency is not one of them)
    assert header == ["Bon", "Filiale", "Zeit", "Artikel", "Menge", "Preis", "Kasse",
                      "reject_code", "reject_reason", "reject_field", "source_file", "source_line"]


def test_jsonl_by_suffix(tmp_path: Path) -> None:
    path = tmp_path / "pos.jsonl"
    path.write_text(json.dumps({k: v for k, v in row().items() if v}) + "\n")
    code, out = invoke("check", str(path), "--json")
    assert code == EXIT_OK, out
    assert json.loads(out)["rows_in"] == 1


def test_unreadable_file_exits_65(tmp_path: Path) -> None:
    path = tmp_path / "pos.csv"
    path.write_bytes(b"\x00\x01binary")
    code, out = invoke("check", str(path))
    assert code == EXIT_DATA
    assert "unreadable: pos.csv: file is binary" in out


def test_a_header_only_file_is_read_and_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "pos_LON01_20261120_11.csv"
    header = (ROOT / "sample_data" / "acme" / "pos_LON01_20261120_10.csv").read_text(encoding="utf-8")
    path.write_text(header.splitlines()[0] + "\n", encoding="utf-8")
    code, out = invoke("--feeds-dir", str(ROOT / "feeds"), "check", str(path), "--feed", "acme_hourly")
    assert code == EXIT_OK, out
    assert "files: pos_LON01_20261120_11.csv\n" in out
    assert "no data rows: pos_LON01_20261120_11.csv" in out
    assert "none readable" not in out
    code, out = invoke("check", str(path), "--json")
    summary = json.loads(out)
    assert (summary["files"], summary["files_without_rows"]) == ([path.name], [path.name])
    assert (summary["rows_in"], summary["transactions_in"], summary["unreadable_files"]) == (0, 0, [])


def test_codes(tmp_path: Path) -> None:
    code, out = invoke("check", "--codes")
    assert code == EXIT_OK
    assert all(c.value in out for c in CATALOG)
    code, out = invoke("check", "--codes", "--json")
    assert [r["code"] for r in json.loads(out)] == [c.value for c in CATALOG]


def test_missing_feed_exits_78_through_main(tmp_path: Path) -> None:
    path = tmp_path / "pos.csv"
    path.write_text(csv_text([row()]))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "--feeds-dir",
            str(tmp_path),
            "check",
            str(path),
            "--feed",
            "nope",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == EXIT_CONFIG
    assert "no feed named 'nope'" in done.stderr


def test_feeds_lists_the_repository_feeds(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("ANTAVO_API_KEY", "ANTAVO_API_SECRET", "CRMCOM_USERNAME", "CRMCOM_PASSWORD",
                     "CRMCOM_ORGANISATION"):  # what the repository's feeds read (the sandbox's values)
        monkeypatch.setenv(variable, "sandbox")
    code, out = invoke("--feeds-dir", str(ROOT / "feeds"), "feeds", "--json")
    assert code == EXIT_OK
    rows = json.loads(out)
    assert rows and all(r["ok"] for r in rows)
    assert {"name", "schedule", "source", "target", "env"} <= set(rows[0])
    assert {need["status"] for r in rows for need in r["env"]} == {"set"}


def every_check_output(tmp_path: Path, *args: str) -> dict[str, str]:
    """Each output of `posfeed check ARGS` as text: the summary, --json, and every --out file."""
    out_dir = tmp_path / "out"
    outputs = {"text": invoke("check", *args)[1], "json": invoke("check", *args, "--json")[1]}
    invoke("check", *args, "--out", str(out_dir))
    for path in sorted(out_dir.iterdir()):
        if path.suffix == ".parquet":
            outputs[path.name] = json.dumps(pl.read_parquet(path).to_dicts(), default=str)
        else:
            outputs[path.name] = path.read_text(encoding="utf-8")
    return outputs


def test_check_outputs_hash_customer_ids_as_a_runs_reports_do(tmp_path: Path) -> None:
    path = tmp_path / "pos.csv"
    path.write_text(csv_text([
        row(customer_id="LOY-CLEAR-71"),
        row(transaction_id="T2", customer_id="LOY-CLEAR-72", currency="XXX"),
    ]))
    outputs = every_check_output(tmp_path, str(path))
    assert set(outputs) == {"text", "json", "checkouts.jsonl", "checkouts.parquet",
                            "checkout_items.parquet", "checkout_items.csv", "rejects.csv", "summary.json"}
    for name, text in outputs.items():
        assert "LOY-CLEAR-7" not in text, name
    with (tmp_path / "out" / "rejects.csv").open(newline="", encoding="utf-8") as handle:
        (reject,) = list(csv.DictReader(handle))
    assert reject["customer_id"] == mask_customer_id("LOY-CLEAR-72")  # as in a run's rejects.csv
    checkouts = [json.loads(line) for line in (tmp_path / "out" / "checkouts.jsonl").read_text().splitlines()]
    assert [c["customer_id"] for c in checkouts] == [mask_customer_id("LOY-CLEAR-71")]


def test_check_hashes_an_exports_own_customer_column(tmp_path: Path) -> None:
    feed = tmp_path / "shop.toml"
    feed.write_text(
        "[format]\ndelimiter = ';'\n[format.columns]\ntransaction_id = 'Bon'\nstore_id = 'Filiale'\n"
        "timestamp = 'Zeit'\nproduct_id = 'Artikel'\nquantity = 'Menge'\nunit_price = 'Preis'\n"
        "customer_id = 'Kunde'\n[format.defaults]\ncurrency = 'EUR'\n"
    )
    export = tmp_path / "export.csv"
    export.write_text("Bon;Filiale;Zeit;Artikel;Menge;Preis;Kunde\n"
                      "B1;F1;2026-11-20 10:00;A1;x;1.00;K-CLEAR-9\n")
    outputs = every_check_output(tmp_path, str(export), "--feed", str(feed))
    for name, text in outputs.items():
        assert "K-CLEAR-9" not in text, name
    assert mask_customer_id("K-CLEAR-9") in outputs["rejects.csv"]


def test_check_keeps_customer_ids_when_the_feed_does_not_hash_them(tmp_path: Path) -> None:
    feed = tmp_path / "clear.toml"
    feed.write_text("[logging]\nhash_customer_ids = false\n")
    path = tmp_path / "pos.csv"
    path.write_text(csv_text([row(customer_id="LOY-CLEAR-71"),
                              row(transaction_id="T2", customer_id="LOY-CLEAR-72", currency="XXX")]))
    outputs = every_check_output(tmp_path, str(path), "--feed", str(feed))
    assert "LOY-CLEAR-72" in outputs["rejects.csv"] and "LOY-CLEAR-71" in outputs["checkouts.jsonl"]


def test_check_reasons_quoting_a_customer_id_show_it_hashed(tmp_path: Path) -> None:
    path = tmp_path / "pos.csv"
    path.write_text(csv_text([row(customer_id="LOY-CLEAR-71"), row(line_no="2", customer_id="LOY-CLEAR-72"),
                              row(transaction_id="T2", customer_id="LOY\u200bCLEAR-73")]))
    outputs = every_check_output(tmp_path, str(path))
    for name, text in outputs.items():
        assert "CLEAR-7" not in text, name
    assert f"(this line: '{mask_customer_id('LOY-CLEAR-71')}')" in outputs["text"]


def test_check_help_says_it_takes_several_files() -> None:
    code, out = invoke("check", "--help")
    assert code == EXIT_OK
    assert "[FILES]..." in out and "one or more local files" in out and "one local file" not in out


def test_check_without_a_feed_guesses_each_files_format_from_its_own_name(tmp_path: Path) -> None:
    """`posfeed check a.csv b.jsonl` reads the CSV as CSV and the JSON Lines as JSON Lines (in either
    order), not every file in the format of the first one's name."""
    csv_path = tmp_path / "a.csv"
    csv_path.write_text(csv_text([row()]))
    jsonl_path = tmp_path / "b.jsonl"
    jsonl_path.write_text(json.dumps({k: v for k, v in row(transaction_id="T2").items() if v}) + "\n")
    for files in ((csv_path, jsonl_path), (jsonl_path, csv_path)):
        done = subprocess.run([sys.executable, "-m", "pipeline", "check", *map(str, files), "--json"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == EXIT_OK, done.stdout + done.stderr
        summary = json.loads(done.stdout)
        assert summary["unreadable_files"] == []
        assert sorted(summary["files"]) == ["a.csv", "b.jsonl"]
        assert (summary["rows_in"], summary["transactions_valid"]) == (2, 2)
