"""Add llama.cpp's perplexity on the *dequantized* GGUF to tests/goldens/<model>.json.

llama.cpp's quantized matmuls quantize activations to 8 bits, so its perplexity on the quantized
GGUF differs from that of the exact weights. Requantizing the GGUF to all-F32 with llama.cpp's
own quantizer (allow_requantize) gives the same weights in float32: llama.cpp's perplexity on that
file is the reference an exact converter must reproduce.

Run with the llama-cpp-python venv (never in CI):
    /work/oracle/bin/python scripts/record_llamacpp_f32_reference.py
"""

from __future__ import annotations

import ctypes
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def perplexity(llm, ids: list[int]) -> float:
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float64)[:-1]  # (T-1, vocab)
    logits -= logits.max(-1, keepdims=True)
    lsm = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(np.exp(-lsm[np.arange(len(ids) - 1), ids[1:]].mean()))


def main() -> None:
    import llama_cpp
    from mlxedge import assets

    for name, path in (("smollm2", assets.smollm2_gguf()), ("gemma3", assets.gemma3_gguf())):
        golden_path = ROOT / "tests" / "goldens" / f"{name}.json"
        golden = json.loads(golden_path.read_text())
        ids = golden["eval"]["ids"]
        with tempfile.TemporaryDirectory() as tmp:
            f32 = Path(tmp) / "f32.gguf"
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = 0  # LLAMA_FTYPE_ALL_F32
            params.allow_requantize = True
            if llama_cpp.llama_model_quantize(str(path).encode(), str(f32).encode(), ctypes.byref(params)):
                raise SystemExit(f"requantize to F32 failed for {name}")
            llm = llama_cpp.Llama(model_path=str(f32), logits_all=True, n_ctx=512, n_batch=512,
                                  n_threads=2, verbose=False)
            ppl = perplexity(llm, ids)
            del llm
        golden["eval"]["perplexity_f32_dequantized"] = round(ppl, 6)
        golden_path.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
        print(f"{name}: llama.cpp perplexity on the GGUF {golden['eval']['perplexity']:.5f}, "
              f"on its F32 dequantization {ppl:.5f}")


if __name__ == "__main__":
    main()
