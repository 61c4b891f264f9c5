"""`posfeed sandbox` as ops run it: a foreground process with its options."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from pipeline.sandbox.store import RecordStore
from pipeline.sinks.escher import EscherSigner, antavo_config


def test_posfeed_sandbox_serves_with_its_options(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = tmp_path / "sandbox.json"
    env = {**os.environ, "POSFEED_SANDBOX_API_SECRET": "cli-secret"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "sandbox", "--port", str(port), "--region", "eu",
         "--api-key", "cli-key", "--max-body-bytes", "2000", "--state", str(state)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                stats = httpx.get(url + "/_sandbox/stats").json()
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert stats["requests"] == 0
        body = b'{"customer":"c","action":"checkout","data":{"transaction_id":"CLI-1","total":1}}'
        signer = EscherSigner(antavo_config("eu"), "cli-key", "cli-secret")
        headers = signer.sign("POST", url + "/events", body, {"Content-Type": "application/json"}).headers
        assert httpx.post(url + "/events", content=body, headers=headers).status_code == 200
        big = b'{"pad":"' + b"x" * 3000 + b'"}'
        headers = signer.sign("POST", url + "/events", big, {"Content-Type": "application/json"}).headers
        assert httpx.post(url + "/events", content=big, headers=headers).status_code == 413
    finally:
        process.terminate()
        _, err = process.communicate(timeout=20)
    assert "api key=cli-key" in err
    assert "cli-secret" not in err  # a secret that was given is never shown
    assert [key for _, key, _ in RecordStore(state).rows()] == ["CLI-1"]


def test_posfeed_sandbox_refuses_a_file_that_is_no_state_file(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a sandbox state")
    done = subprocess.run([sys.executable, "-m", "pipeline", "sandbox", "--port", "0", "--state", str(notes)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert str(notes) in done.stderr and "Traceback" not in done.stderr
    assert notes.read_text() == "not a sandbox state"


def test_posfeed_sandbox_that_cannot_listen_exits_1_naming_the_address() -> None:
    """OPERATIONS.md's exit codes: 1 when `posfeed sandbox` cannot listen on its address."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "pipeline", "sandbox", "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr[-2000:]
    # as every other error of posfeed's, the state file's included (not click's bare "Error:")
    assert done.stderr.startswith(f"posfeed: error: cannot listen on 127.0.0.1:{port}: "), done.stderr
    assert "Traceback" not in done.stderr


def test_posfeed_sandbox_errors_speak_as_posfeed_errors(tmp_path: Path) -> None:
    """A state file that is none exits 78 and an empty region or key is a usage error (2), each
    naming what is wrong in the CLI's words."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a sandbox state")
    done = subprocess.run([sys.executable, "-m", "pipeline", "sandbox", "--port", "0", "--state", str(notes)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 78 and done.stderr.startswith(f"posfeed: error: {notes}"), done.stderr
    for option in ("--region", "--api-key", "--api-secret"):
        blank = subprocess.run([sys.executable, "-m", "pipeline", "sandbox", "--port", "0", option, " "],
                               capture_output=True, text=True, timeout=60)
        assert blank.returncode == 2, (option, blank.stderr[-2000:])
        assert "Usage:" in blank.stderr and f"Invalid value for '{option}'" in blank.stderr, blank.stderr
