"""scripts/test, README's test command: it names what a machine lacks instead of failing later."""

from __future__ import annotations

import os
import shutil
import subprocess
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
