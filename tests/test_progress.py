"""Progress output (issue 10): a bar on a terminal that stays until the end, one line per stage
start and end when stderr is not a terminal (a pipe, a log, CI)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mlxedge import progress as P

HERE = Path(__file__).parent
GGUF = HERE / "fixtures" / "gguf" / "llama-q4_0.gguf"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_convert_prints_lines_when_stderr_is_a_pipe(tmp_path):
    """A piped convert writes a start line and a done line per stage (the tensors first), no
    carriage-return bar."""
    proc = subprocess.run([sys.executable, "-m", "mlxedge", "convert", str(GGUF), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert re.fullmatch(r"convert: (\d+) tensors \.\.\.", lines[0]), lines
    n = lines[0].split()[1]
    assert re.fullmatch(rf"convert: {n} tensors done in \d+\.\d s", lines[1]), lines
    assert len(lines) % 2 == 0, lines
    for start, done in zip(lines[2::2], lines[3::2]):  # later stages, each started and done
        assert start.endswith(" ...") and re.fullmatch(re.escape(start[:-4]) + r" done in \d+\.\d s", done), lines
    assert proc.stdout.startswith(f"wrote {tmp_path / 'out'}")


def test_quiet_convert_prints_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mlxedge", "convert", str(GGUF), "-o", str(tmp_path / "out"),
                           "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == "", proc.stderr


def test_lines_for_a_loop_a_byte_count_and_a_stage(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert list(P.progress(range(3), desc="probe", unit="tensor")) == [0, 1, 2]
    with P.progress(None, desc="copying x.gguf", unit="B", total=3 << 20) as bar:
        bar.update(3 << 20)
    with P.stage("convert: writing"):
        pass
    lines = err.getvalue().splitlines()
    assert [re.sub(r"\d+\.\d s$", "S s", ln) for ln in lines] == [
        "probe: 3 tensors ...", "probe: 3 tensors done in S s",
        "copying x.gguf: 3.0 MiB ...", "copying x.gguf: 3.0 MiB done in S s",
        "convert: writing ...", "convert: writing done in S s"]


def test_work_that_fails_has_no_done_line(monkeypatch):
    """The error says what happened; a done line after it would say the opposite."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)

    def failing():
        yield 1
        raise ValueError("broken")
    with pytest.raises(ValueError):
        for _ in P.progress(failing(), desc="convert", unit="tensor", total=2):
            pass
    with pytest.raises(ValueError):
        with P.stage("convert: writing"):
            raise ValueError("broken")
    assert err.getvalue().splitlines() == ["convert: 2 tensors ...", "convert: writing ..."]


def test_disabled_prints_nothing(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert list(P.progress(range(2), desc="convert", disable=True)) == [0, 1]
    with P.stage("convert: writing", disable=True):
        pass
    assert err.getvalue() == ""


def test_a_bar_on_a_terminal_stays_when_its_loop_ends(monkeypatch):
    """The bar is not cleared when the tensor loop ends (it was, leaving the last seconds of a
    convert with nothing on screen): its final state stays, ended by a newline."""
    tty = Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    assert list(P.progress(range(10), desc="convert", unit="tensor")) == list(range(10))
    out = tty.getvalue()
    assert "\r" in out and out.endswith("\n")
    assert "10/10" in out.rsplit("\r", 1)[-1]
