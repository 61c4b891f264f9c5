from pathlib import Path

from pipeline.sandbox.server import SandboxServer
from tests.test_day_reports import DAY, Cli, _assert_balanced_per_currency, _csv, _line, _write


def test_scratch(sandbox: SandboxServer, ledger_location, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    d = DAY.replace('-', '')
    ret = _line("R1", 1, "-5.00", kind="return", original="T1").replace(",1,-5.00,,-5.00", ",-1,5.00,,-5.00")
    _write(drop, f"pos_LON01_{d}_10.csv", [
        _line("T1", 1, "5.00"), _line("T1", 2, "6.00"), _line("T2", 1, "2.00"), ret,
        _line("E1", 1, "4.00", currency="EUR"),
    ])
    posfeed = Cli(tmp_path, sandbox, ledger_location, drop)
    sandbox.config.fault_rate, sandbox.config.fault_kinds = 1.0, ("error_503",)
    run = posfeed.run()
    print("run1", run["balanced"], run["failed_retryable"], run["currencies"])
    sandbox.config.fault_rate = 0.0
    _write(drop, f"pos_LON01_{d}_11.csv", [
        _line("T1", 1, "5.00"), _line("T1", 2, "6.00"), _line("T2", 1, "2.50"),
        _line("R2", 1, "-6.00", kind="return", original="T1").replace(",1,-6.00,,-6.00", ",-1,6.00,,-6.00"),
    ])
    run2 = posfeed.run()
    print("run2", run2["balanced"], run2["accepted"], run2["currencies"])
    for r in _csv(Path(run2["reports_path"]) / "summary.csv"):
        print(r["source_file"], r["origin"], r["currency"], r["rows_in"], r["transactions_in"], r["amount_in"], r["amount_accounted"], r["balanced"])
    _assert_balanced_per_currency(_csv(Path(run2["reports_path"]) / "summary.csv"))
    rr = posfeed("rerun", "--feed", str(posfeed.feed_file), "--failed", "--include-permanent")
    print("rerun", rr["balanced"], rr["accepted"], rr["currencies"])
    _assert_balanced_per_currency(_csv(Path(rr["reports_path"]) / "summary.csv"))
    day = posfeed.day()
    for r in _csv(Path(day["reports_path"]) / "detail.csv"):
        print(r["source_file"], r["transaction_id"], r["state"], r["amount"], r["origin"], r["error_code"])
    _assert_balanced_per_currency(_csv(Path(day["reports_path"]) / "summary.csv"))
    print("day", day["balanced"], day["currencies"])
    assert day["balanced"]
