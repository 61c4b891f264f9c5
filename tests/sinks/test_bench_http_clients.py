"""Smoke run of bench/http_clients.py: both clients against a real local server, every answer 200."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "http_clients.py"


def test_the_client_comparison_runs_and_reports_both_sides() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--requests", "40", "--rounds", "1", "--json"],
                          capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(done.stdout)

    medians = report["median_cpu_us_per_request"]
    assert set(medians) == {"aiohttp (ours)", "httpx"}
    assert all(value > 0 for value in medians.values())
    assert report["ours_over_httpx"] == medians["aiohttp (ours)"] / medians["httpx"]
