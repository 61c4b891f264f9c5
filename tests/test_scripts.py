"""scripts/test, README's test command: it names what a machine lacks instead of failing later."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_scripts_test_lists_missing_programs_with_their_packages(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "id", "dirname", "python3"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(bin_dir), "POSFEED_SBIN_DIRS": "", "POSFEED_LIB_DIRS": "",
           "POSFEED_TEST_NO_INSTALL": "1"}
    result = subprocess.run(
        [str(bin_dir / "bash"), str(ROOT / "scripts" / "test"), "--collect-only"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1, result.stderr
    for program, package in (("sshd", "openssh-server"), ("ssh-keygen", "openssh-client"),
                             ("useradd", "passwd"), ("initdb", "postgresql"), ("pgbouncer", "pgbouncer"),
                             ("libatomic.so.1", "libatomic1")):
        assert f"{program} (Debian package {package})" in result.stderr
    assert "collected" not in result.stdout, "pytest ran although programs were missing"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "\nscripts/test" in ci
    assert "\nscripts/test " in readme


def test_scripts_test_installs_the_dev_extras_and_passes_its_arguments_to_pytest(tmp_path: Path) -> None:
    """README: `scripts/test` "installs the project with its dev extras and runs the whole suite in
    two worker processes (pytest-xdist); arguments go to pytest (`scripts/test -k ledger`, or
    `scripts/test -n 0` for one process)". On this machine, which has the programs the tests need,
    with a `python3` that records what it is asked (nothing is installed): pip installs `.[dev]`
    from the checkout, then pytest runs with `-n 2` and the arguments after it, so a `-n 0` given
    wins."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    shim = bin_dir / "python3"
    shim.write_text(f'#!/bin/sh\necho "$PWD|$*" >> {calls}\n', encoding="utf-8")
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "POSFEED_TEST_NO_INSTALL": "1"}
    for args in (["-k", "ledger"], ["-n", "0"]):
        done = subprocess.run([str(ROOT / "scripts" / "test"), *args], env=env, capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    lines = calls.read_text(encoding="utf-8").splitlines()
    where = {line.split("|", 1)[0] for line in lines}
    assert where == {str(ROOT)}
    commands = [line.split("|", 1)[1].split() for line in lines]
    install = commands[0]
    assert install[:3] == ["-m", "pip", "install"] and install[-2:] == ["-e", ".[dev]"], install
    assert commands[1] == ["-m", "pytest", "-q", "-n", "2", "--dist", "worksteal", "-k", "ledger"]
    assert commands[2] == install
    assert commands[3] == ["-m", "pytest", "-q", "-n", "2", "--dist", "worksteal", "-n", "0"]
    (tmp_path / "test_one.py").write_text("def test_one() -> None:\n    pass\n", encoding="utf-8")
    for given, workers in ((["-n", "2"], True), (["-n", "2", "-n", "0"], False)):  # the last -n wins
        ran = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *given,
                              "test_one.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                             check=False)
        assert ran.returncode == 0 and ("2 workers" in ran.stdout) == workers, ran.stdout
