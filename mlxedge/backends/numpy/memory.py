"""Which weight mode fits: memory each mode needs against memory this process can still get.

need(mode) = M + weights(mode) + work, in bytes, from the safetensors headers and config:
- M: the largest tensor's stored bytes (with its scales/biases): tensors are memory-mapped one at
  a time while they are converted (weights.tensor_loaders);
- weights: float32 4·P + 8·L, float16 2·P + 8·L + S, lean Q + F + S, where P is the parameters
  of all matrices (a packed weight counted unpacked), L the largest matrix outside the embedding
  (the transient of fusing q/k/v or gate/up, and of converting one matrix), Q the stored bytes of
  the packed matrices (lean re-lays them column-major: a copy of the same size), F those of float
  matrices (lean keeps them mapped as stored), S the scratch (lean.py);
- work: the KV cache for CONTEXT tokens, attention scores (layers.SCORES_LIMIT), prefill
  activations for PREFILL tokens, and the tokenizer (~TOKENIZER_FACTOR x tokenizer.json: Gemma 3's
  33 MB file takes 354 MB of address space once loaded).
Available = the smallest of: RLIMIT_AS soft limit - address space in use (VmSize); cgroup
memory.max - memory.current; MemAvailable (which already leaves out this process's RSS).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

from ... import safetensors
from ...errors import OutOfMemory
from ...safetensors import quant_spec
from .layers import SCORES_LIMIT
from .lean import scratch_bytes
from .weights import MODES, bundle_files

CONTEXT = 2048
PREFILL = 512
TOKENIZER_FACTOR = 10
GB = 1e9


@dataclass
class Estimate:
    needs: dict[str, int]   # mode -> bytes
    available: int
    source: str             # where `available` comes from, in words

    def pick(self, mode: str, what: str) -> str:
        """`mode`, or for "auto" the first of float32, float16, lean that fits; else OutOfMemory."""
        if mode == "auto":
            for m in MODES:
                if self.needs[m] <= self.available:
                    return m
        elif self.needs[mode] <= self.available:
            return mode
        needs = ", ".join(f"{m} {self.needs[m] / GB:.2f} GB" for m in MODES)
        tried = "any weight mode" if mode == "auto" else f"weight mode {mode}"
        raise OutOfMemory(f"{what} does not fit in {tried}: needs {needs}; "
                           f"{self.available / GB:.2f} GB available ({self.source})")


def estimate(directory: str | Path, config: dict) -> Estimate:
    """Memory each weight mode needs for the bundle at `directory`, and what is available."""
    files = bundle_files(directory)
    quant = config.get("quantization") or {}
    tensors = {k: t for f in files for k, t in safetensors.scan(f).items()}
    params, largest, scratch, packed, floats, mapped = 0, 0, 0, 0, 0, 0
    for name, t in tensors.items():
        if not name.endswith(".weight") or len(t.shape) != 2:
            continue
        prefix = name[: -len(".weight")]
        bits = quant_spec(quant, prefix)[0] if f"{prefix}.scales" in tensors else None
        stored = sum(tensors[f"{prefix}.{p}"].nbytes for p in ("weight", "scales", "biases")
                     if f"{prefix}.{p}" in tensors)
        mapped = max(mapped, stored)
        if bits:
            packed += stored
        else:
            floats += stored
        rows, cols = t.shape[0], t.shape[1] * 32 // bits if bits else t.shape[1]
        params += rows * cols
        if "embed" not in prefix and prefix != "lm_head":
            largest = max(largest, rows * cols)
        scratch = max(scratch, scratch_bytes(cols, bits))
    tok = Path(directory) / "tokenizer.json"
    work = _work(config) + (TOKENIZER_FACTOR * tok.stat().st_size if tok.exists() else 0)
    weights = {"float32": 4 * params + 8 * largest, "float16": 2 * params + 8 * largest + scratch,
               "lean": packed + floats + scratch}
    available, source = available_memory()
    return Estimate({m: mapped + weights[m] + work for m in MODES}, available, source)


def _work(cfg: dict) -> int:
    heads = cfg.get("num_attention_heads") or 1
    hidden = cfg.get("hidden_size") or 0
    head_dim = cfg.get("head_dim") or hidden // heads
    kv = 2 * cfg.get("num_hidden_layers", 0) * (cfg.get("num_key_value_heads") or heads) * head_dim * 4
    act = PREFILL * (4 * (cfg.get("intermediate_size") or 4 * hidden) + 8 * hidden) * 4
    return kv * CONTEXT + 4 * SCORES_LIMIT + act + 4 * (cfg.get("vocab_size") or 0) * 4


def available_memory() -> tuple[int, str]:
    """(bytes this process can still allocate, where the figure comes from)."""
    found = []
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        used = _status_kb("VmSize") * 1024
        found.append((soft - used, f"RLIMIT_AS {soft / GB:.2f} GB, {used / GB:.2f} GB of address space in use"))
    cg = _cgroup()
    if cg is not None:
        found.append(cg)
    avail = _meminfo_kb("MemAvailable")
    if avail is not None:
        found.append((avail * 1024, "MemAvailable"))
    if not found:
        return 1 << 62, "no limit found"
    return min(found)


def _cgroup() -> tuple[int, str] | None:
    try:
        rel = Path("/proc/self/cgroup").read_text().strip().split("\n")[0].split("::")[-1]
        d = Path("/sys/fs/cgroup") / rel.lstrip("/")
        limit = (d / "memory.max").read_text().strip()
        if limit == "max":
            return None
        current = int((d / "memory.current").read_text())
    except (OSError, ValueError, IndexError):
        return None
    return int(limit) - current, f"cgroup memory.max {int(limit) / GB:.2f} GB, {current / GB:.2f} GB in use"


def _status_kb(key: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _meminfo_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None
