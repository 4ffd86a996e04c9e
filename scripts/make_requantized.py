#!/usr/bin/env python3
"""Requantize the real GGUFs to Q2_K, Q3_K_M and Q6_K with llama.cpp's quantizer, into out/requant/.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/make_requantized.py [--models gemma3,smollm2]
        [--types Q2_K,Q3_K_M,Q6_K] [--out out/requant]

llama.cpp's `llama-quantize --allow-requantize` dequantizes every tensor to float32 and quantizes
it again. xllamacpp (`pip install xllamacpp`, llama.cpp prebuilt for PyPI) ships llama.cpp's
quantization kernels (`ggml_quantize_chunk`) but not `llama_model_quantize`, so this script does
the two other steps itself:

- float32 values: gguf-py's dequantization, which is llama.cpp's `to_float` for every type these
  files hold (tests/test_ggml.py checks the repackable ones bit for bit) — the F32 requantization
  of scripts/record_llamacpp_f32_reference.py;
- the per-tensor type: a port of `llama_tensor_get_type` (src/llama-quant.cpp) restricted to the
  three ftypes made here, without importance matrix, *including* its fallback for rows that are
  not a multiple of 256 (Gemma 3 270M's 640-wide and SmolLM2's 576-wide inputs: Q2_K/Q3_K ->
  IQ4_NL, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0).

The data of each tensor comes from `ggml_quantize_chunk` (no imatrix), the metadata is copied with
`general.file_type` set to the new ftype. Deterministic: the same input gives the same bytes.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gguf  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402

FTYPES = {"Q2_K": 10, "Q3_K_M": 12, "Q6_K": 18}  # llama_ftype values (general.file_type)
BASE = {"Q2_K": T.Q2_K, "Q3_K_M": T.Q3_K, "Q6_K": T.Q6_K}
FALLBACK = {T.Q2_K: T.IQ4_NL, T.Q3_K: T.IQ4_NL, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_type(ftype: str, name: str, ne0: int, state: dict, n_layer: int, n_gqa: int,
                has_output: bool) -> T:
    """llama_tensor_get_type for Q2_K / Q3_K_M / Q6_K (no MoE, not Falcon, no overrides)."""
    new = BASE[ftype]
    if name == "output.weight" or (not has_output and name == "token_embd.weight"):
        new = T.Q8_0 if ne0 % 256 else (new if new == T.Q8_0 else T.Q6_K)
        return new  # (the output branch never falls back: it picked Q8_0 itself)
    if "attn_v.weight" in name:
        if ftype == "Q2_K":
            new = T.Q4_K if n_gqa >= 4 else T.Q3_K
        elif ftype == "Q3_K_M":
            new = T.Q5_K if state["wv"] < 2 else T.Q4_K
        state["wv"] += 1
    elif "ffn_down" in name:
        i = state["down"]
        if ftype == "Q2_K":
            new = T.Q3_K
        elif ftype == "Q3_K_M":
            new = T.Q5_K if i < n_layer // 16 else T.Q4_K  # arch != FALCON
        state["down"] += 1
    elif "attn_output.weight" in name:
        if ftype == "Q2_K":
            new = T.Q3_K
        elif ftype == "Q3_K_M":
            new = T.Q4_K
    block = gguf.GGML_QUANT_SIZES[new][0]
    if ne0 % block:
        new = FALLBACK[new]
        if ne0 % gguf.GGML_QUANT_SIZES[new][0]:
            new = T.F16
    return new


def _ggml():
    import xllamacpp

    lib = ctypes.CDLL(str(Path(xllamacpp.__file__).parent / "xllamacpp.abi3.so"))
    fn = lib.ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_void_p]
    return fn


def quantize(fn, x: np.ndarray, qtype: T) -> np.ndarray:
    """(rows, n) float32 -> (rows, bytes per row) uint8 in GGML type `qtype` (llama.cpp's kernel)."""
    rows, n = x.shape
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    out = np.zeros((rows, n // block * size), np.uint8)
    x = np.ascontiguousarray(x, np.float32)
    written = fn(int(qtype), x.ctypes.data, out.ctypes.data, 0, rows, n, None)
    if written != out.nbytes:
        raise SystemExit(f"ggml_quantize_chunk wrote {written} bytes, expected {out.nbytes}")
    return out


def requantize(src: Path, dst: Path, ftype: str, fn) -> dict:
    r = gguf.GGUFReader(src)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    get = lambda k: int(r.fields[f"{arch}.{k}"].parts[-1][0])  # noqa: E731
    n_layer, n_head, n_kv = get("block_count"), get("attention.head_count"), get("attention.head_count_kv")
    names = {t.name for t in r.tensors}
    has_output = "output.weight" in names
    w = gguf.GGUFWriter(dst, arch=arch)
    for field in r.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
            continue
        sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY and len(field.types) > 1 else None
        w.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
    w.add_file_type(FTYPES[ftype])
    state = {"wv": 0, "down": 0}
    counts: dict[str, int] = {}
    for t in r.tensors:
        ne = [int(s) for s in t.shape]
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(ne[::-1])
        qtype = T.F32
        if len(ne) == 2:
            qtype = tensor_type(ftype, t.name, ne[0], state, n_layer, n_head // n_kv, has_output)
        if qtype == T.F32:
            w.add_tensor(t.name, x)
        elif qtype == T.F16:
            w.add_tensor(t.name, x.astype(np.float16))
        else:
            w.add_tensor(t.name, quantize(fn, x, qtype), raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + int(np.prod(ne))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return counts


def main() -> None:
    from mlxedge import assets

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="gemma3,smollm2")
    ap.add_argument("--types", default="Q2_K,Q3_K_M,Q6_K")
    ap.add_argument("--out", default=str(ROOT / "out" / "requant"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fn = _ggml()
    models = {"gemma3": assets.gemma3_gguf, "smollm2": assets.smollm2_gguf}
    for m in args.models.split(","):
        src = Path(models[m]())
        for ftype in args.types.split(","):
            dst = out / f"{m}-{ftype.lower()}.gguf"
            tmp = dst.with_suffix(".tmp")
            counts = requantize(src, tmp, ftype, fn)
            tmp.replace(dst)
            total = sum(counts.values())
            mix = ", ".join(f"{k} {v / total:.1%}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
            print(f"{dst.name}: {dst.stat().st_size / 1e6:.1f} MB ({mix})", flush=True)


if __name__ == "__main__":
    main()
