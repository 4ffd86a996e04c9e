"""Options and prompts a first-time user gets wrong (issue 10): refused at once, on one line, before
any model loads; a prompt longer than the context is refused with both lengths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlxedge import api
from mlxedge.errors import MlxEdgeError
from mlxedge.sampling import SamplingParams

TINY_GGUF = Path(__file__).parent / "fixtures" / "gguf" / "llama-q4_0.gguf"  # context_length 256


def mlxedge(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlxedge", *args], capture_output=True, text=True, timeout=60,
                          **kwargs)


@pytest.mark.parametrize("option,value", [("--temp", "nan"), ("--temp", "inf"), ("--temp", "-1"),
                                          ("--top-p", "nan"), ("--min-p", "inf"),
                                          ("--repetition-penalty", "nan"), ("--max-tokens", "0")])
def test_bad_option_values_fail_before_the_model_loads(option, value, tmp_path):
    # the model does not exist: an error about the option shows that it was checked first
    proc = mlxedge("generate", "--model", str(tmp_path / "missing.gguf"), "-p", "Hi", option, value)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"mlxedge generate: error: {option} must be"), lines[0]


def test_sampling_params_refuse_non_finite_values():
    for key in ("temp", "top_p", "min_p", "repetition_penalty"):
        with pytest.raises(MlxEdgeError, match="finite"):
            SamplingParams(**{key: float("nan")})


def test_prompt_from_a_closed_stdin(tmp_path):
    proc = mlxedge("generate", "--model", str(tmp_path / "missing.gguf"), "--prompt", "-",
                   preexec_fn=lambda: os.close(0))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == ["mlxedge generate: error: --prompt -: standard input is closed"]


def test_prompt_longer_than_the_context_is_refused(tmp_path):
    env = {**os.environ, "MLXEDGE_HOME": str(tmp_path / "home")}
    proc = mlxedge("generate", "--model", str(TINY_GGUF), "--no-chat-template", "--quiet",
                   "-p", "hello world " * 300, env=env)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "tokens, longer than the model's context of 256 tokens" in lines[0], lines[0]


def test_generation_stops_at_the_end_of_the_context(tmp_path, monkeypatch):
    monkeypatch.setenv("MLXEDGE_HOME", str(tmp_path / "home"))
    model = api.load(TINY_GGUF, backend="numpy")
    assert model.context_length == 256
    ids = (model.encode_prompt("hello world", chat_template=False) * 100)[:240]
    gen = model.generation(ids, max_tokens=1000)
    gen.run()
    assert len(ids) + len(gen.tokens) <= 256


def test_chat_help_tells_its_own_defaults():
    out = mlxedge("chat", "--help").stdout
    assert "(default 512)" in " ".join(out.split())
    assert "--no-chat-template" not in out
    assert "--no-chat-template" in mlxedge("generate", "--help").stdout


def test_help_names_the_environment_variables(tmp_path):
    """MLXEDGE_CACHE was documented nowhere a user would look (and now no longer holds conversions):
    `mlxedge --help` names the variables, and MLXEDGE_HOME does move where a GGUF is converted."""
    out = mlxedge("--help").stdout
    assert "MLXEDGE_CACHE" in out and "MLXEDGE_HOME" in out
    env = {**os.environ, "MLXEDGE_HOME": str(tmp_path / "home")}
    proc = mlxedge("generate", "--model", str(TINY_GGUF), "--no-chat-template", "--quiet", "-p", "hi", "-m", "1",
                   env=env)
    assert proc.returncode == 0, proc.stderr
    assert [p for p in (tmp_path / "home").rglob("*") if p.is_file()]
