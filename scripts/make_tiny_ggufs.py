#!/usr/bin/env python3
"""Make tests/fixtures/gguf/: tiny GGUFs written by llama.cpp's own tools, with independent goldens.

Per architecture a tiny seeded random Hugging Face checkpoint is built with `transformers`, converted
by llama.cpp's `convert_hf_to_gguf.py` (so the files carry llama.cpp's real conventions: q/k rows
permuted for llama, Gemma norms stored as 1 + w, reversed dims, tied output omitted), and some are
quantized further by llama.cpp's own quantizer. The goldens beside each `NAME.gguf` in `NAME.npz`:

  tokens           (T,) int32 input ids
  logits_hf        (T, V) float32: transformers on the GGUF's own weights (gguf-py dequantized,
                   q/k permutation and Gemma's +1 undone, loaded into the HF model). For f32 files
                   these equal transformers on the original checkpoint (checked here).
  logits_llamacpp  (T, V) float16: llama.cpp (llama-cpp-python, logits_all) on the GGUF itself
                   (the looser oracle, so half precision is plenty and halves the fixture).
  meta             JSON: arch, variant, hf config.json, tensor types, tool versions.

Three interpreters, one job each (the driver runs every stage as a subprocess):
  --torch-python  (default /work/torchenv/bin/python: torch 2.15 from PyPI, transformers 4.57.6,
                  safetensors, sentencepiece, protobuf) stages `hf`, `convert`, `oracle`:
                  build checkpoints, run llama.cpp's converter (with its bundled gguf-py), compute
                  transformers logits.
  --llama-python  (default /work/oracle/bin/python: llama-cpp-python 0.3.36) stage `llamacpp`:
                  llama_model_quantize for the Q4_0/Q4_1/Q5_0/Q5_1/Q4_K_M files, llama.cpp logits.
  the driver      (any python3) copies the results into --out.

Tokenizer: every checkpoint gets the 512-token byte-level BPE of shared/fixtures/onnx/tiny-llama/hf.
convert_hf_to_gguf.py identifies a BPE pre-tokenizer by hashing its output on a test string and
refuses unknown ones, and its Phi-3 path wants a SentencePiece tokenizer.model. The `convert` stage
therefore imports the converter and patches two vocabulary methods before running its main():
`TextModel.get_vocab_base_pre` returns "gpt-2" (the GPT-2 byte-level regex) and `Phi3MiniModel.set_vocab` takes the gpt2 path
(Gemma 3 takes the gpt2 path by itself when there is no tokenizer.model). Only tokenizer metadata
is affected; tensor conventions are the converter's own.

    python3 scripts/make_tiny_ggufs.py [--llama-cpp DIR] [--out tests/fixtures/gguf]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = Path("/work/shared/fixtures/onnx/tiny-llama/hf")
LLAMA_CPP = Path("/tmp/llsdist/llama_cpp_python-0.3.36/vendor/llama.cpp")
N_TOKENS = 16

_SMALL = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
              rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=None)

# name -> (transformers config class, HF architecture class, config overrides, seed)
MODELS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(_SMALL, rope_theta=50000.0, tie_word_embeddings=True), 1),
    # Mistral-style: 4:1 GQA, head_dim 32 != hidden / heads, untied lm_head; llama.cpp calls it llama.
    "mistral": ("MistralConfig", "MistralForCausalLM",
                dict(_SMALL, num_key_value_heads=1, head_dim=32, rope_theta=1e6, sliding_window=None,
                     tie_word_embeddings=False), 2),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(_SMALL, rope_theta=1e6, tie_word_embeddings=True, use_sliding_window=False), 3),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM",
              dict(_SMALL, head_dim=32, rope_theta=1e6, tie_word_embeddings=True), 4),
    # 6 layers so layer 5 is global (5 local : 1 global); window 8 < 16 tokens so it matters.
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(_SMALL, num_hidden_layers=6, intermediate_size=64, sliding_window=8,
                    rope_theta=1e6, rope_local_base_freq=10000.0, query_pre_attn_scalar=16,
                    rms_norm_eps=1e-6, tie_word_embeddings=True, final_logit_softcapping=None,
                    attn_logit_softcapping=None), 5),
    "phi3": ("Phi3Config", "Phi3ForCausalLM",
             dict(_SMALL, partial_rotary_factor=0.5, rope_theta=10000.0, original_max_position_embeddings=256,
                  sliding_window=None, tie_word_embeddings=False), 6),
    # hidden and ffn 256: K-quant super-blocks need rows of 256 (else llama.cpp falls back).
    # One layer keeps the file small; its seven matrices take seven GGML types (below).
    "llama256": ("LlamaConfig", "LlamaForCausalLM",
                 dict(_SMALL, hidden_size=256, intermediate_size=256, head_dim=64, num_hidden_layers=1,
                      rope_theta=10000.0, tie_word_embeddings=True), 7),
}

# GGUF file -> (model, how it is made). ("convert", outtype) = convert_hf_to_gguf --outtype;
# ("quantize", ftype, from[, {tensor: type}]) = llama.cpp's llama_model_quantize on another GGUF,
# optionally with per-tensor type overrides (its --tensor-type).
GGUFS = {
    "llama-f32": ("llama", ("convert", "f32")),
    "mistral-f32": ("mistral", ("convert", "f32")),
    "qwen2-f32": ("qwen2", ("convert", "f32")),
    "qwen3-f32": ("qwen3", ("convert", "f32")),
    "gemma3-f32": ("gemma3", ("convert", "f32")),
    "phi3-f32": ("phi3", ("convert", "f32")),
    "llama-f16": ("llama", ("convert", "f16")),
    "qwen3-q8_0": ("qwen3", ("convert", "q8_0")),
    "llama-q4_0": ("llama", ("quantize", "Q4_0", "llama-f32")),
    "mistral-q4_1": ("mistral", ("quantize", "Q4_1", "mistral-f32")),
    "qwen2-q5_0": ("qwen2", ("quantize", "Q5_0", "qwen2-f32")),
    "gemma3-q5_1": ("gemma3", ("quantize", "Q5_1", "gemma3-f32")),
    # One file, one tensor per GGML type: exact MLX repacks (Q4_K, Q5_K, TQ1_0, TQ2_0) and types
    # MLX cannot express (Q2_K, Q3_K, Q6_K, IQ4_NL), chosen per tensor with llama.cpp's overrides.
    "llama256-kmix": ("llama256", ("quantize", "Q4_K_M", "llama256-f32", {
        "token_embd": "Q4_K", "attn_q": "Q2_K", "attn_k": "Q3_K", "attn_v": "Q6_K",
        "attn_output": "Q5_K", "ffn_gate": "TQ1_0", "ffn_up": "TQ2_0", "ffn_down": "IQ4_NL"})),
    "llama256-f32": ("llama256", ("convert", "f32")),
}
KEEP_OUT = {"llama256-f32", "mistral-f32"}  # too big to keep (their quantized files stay)


# ---------------------------------------------------------------- stage hf (torch venv)

def stage_hf(work: Path) -> None:
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER))
    for name, (cfg_cls, arch_cls, overrides, seed) in MODELS.items():
        config = getattr(transformers, cfg_cls)(**overrides)
        config.architectures = [arch_cls]
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
        _randomize(model, gemma=name.startswith("gemma"), seed=seed)
        out = work / "hf" / name
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        rng = np.random.default_rng(seed)
        tokens = np.concatenate([[1], rng.integers(3, 512, N_TOKENS - 1)]).astype(np.int32)
        with torch.no_grad():
            logits = model(torch.tensor(tokens[None], dtype=torch.long)).logits[0].float().numpy()
        np.savez(work / "hf" / f"{name}.npz", tokens=tokens, logits=logits)
        # every field with its value in effect (config.json leaves out the defaults)
        (work / "hf" / f"{name}.config.json").write_text(json.dumps(model.config.to_dict(), default=str))
        print(f"hf {name}: logits std {logits.std():.2f}, max {np.abs(logits).max():.2f}")


def _randomize(model, gemma: bool, seed: int) -> None:
    """Weights large enough that logits spread over several units (HF's init gives near-flat ones).

    Norm weights are random too, so a missing Gemma +1 or a wrong norm mapping shows.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_((0.0 if gemma else 1.0) + 0.3 * r)
            elif name.endswith(".bias"):
                p.copy_(0.3 * r)
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(0.5 * r)
            else:
                p.copy_(r / p.shape[1] ** 0.5)  # (out, in): unit gain


# ---------------------------------------------------------------- stage convert (torch venv)

def stage_convert(hf_dir: Path, outtype: str, outfile: Path) -> None:
    """Run llama.cpp's convert_hf_to_gguf.py in this process, with the two tokenizer patches."""
    sys.path.insert(0, str(LLAMA_CPP))
    import convert_hf_to_gguf  # inserts its own gguf-py into sys.path
    from conversion.base import TextModel
    from conversion.phi import Phi3MiniModel

    TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    Phi3MiniModel.set_vocab = lambda self: self._set_vocab_gpt2()
    # general.name: llama.cpp's vocab loader special-cases names containing "phi3" (it then expects
    # Phi-3's own special tokens), so the tiny models get a neutral name.
    name = f"tiny {hf_dir.name}".replace("phi3", "phi-three")
    sys.argv = ["convert_hf_to_gguf.py", str(hf_dir), "--outtype", outtype, "--outfile", str(outfile),
                "--model-name", name]
    convert_hf_to_gguf.main()


# ---------------------------------------------------------------- stage oracle (torch venv)

def stage_oracle(work: Path) -> None:
    """transformers logits with each GGUF's dequantized weights put back into the HF model."""
    sys.path.insert(0, str(LLAMA_CPP / "gguf-py"))
    import gguf
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    for gname, (model_name, _) in GGUFS.items():
        hf_dir = work / "hf" / model_name
        model = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager",
                                                     torch_dtype=torch.float32).eval()
        original = {k: v.clone() for k, v in model.state_dict().items()}
        state = _gguf_state(gguf, work / f"{gname}.gguf", model)
        for k, v in state.items():
            if gname.endswith("-f32"):  # the converter must have kept f32 weights exactly
                assert torch.allclose(v, original[k], rtol=0, atol=1e-6), (gname, k)
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected, unexpected
        tied = model.config.tie_word_embeddings
        assert set(missing) <= ({"lm_head.weight"} if tied else set()), missing
        if tied:
            model.tie_weights()
        golden = np.load(work / "hf" / f"{model_name}.npz")
        with torch.no_grad():
            logits = model(torch.tensor(golden["tokens"][None], dtype=torch.long)).logits[0].numpy()
        if gname.endswith("-f32"):
            assert np.allclose(logits, golden["logits"], rtol=0, atol=1e-4), gname
        np.save(work / f"{gname}.logits_hf.npy", logits.astype(np.float32))
        print(f"oracle {gname}: max |logits - original model's| {np.abs(logits - golden['logits']).max():.3g}")


def _gguf_state(gguf, path: Path, model) -> dict:
    """HF state dict from a GGUF via gguf-py: llama.cpp's own name table, dequantizer, conventions."""
    import numpy as np
    import torch

    reader = gguf.GGUFReader(path)
    arch_name = reader.fields["general.architecture"].contents()
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    cfg = model.config
    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    tensors = {t.name: t for t in reader.tensors}
    state = {}
    for hf_name in model.state_dict():
        gname = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gname not in tensors:
            continue
        t = tensors[gname]
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        x = x.reshape(tuple(reversed([int(d) for d in t.shape])))
        if arch_name == "llama" and gname.endswith(("attn_q.weight", "attn_k.weight")):
            heads = cfg.num_attention_heads if "attn_q" in gname else cfg.num_key_value_heads
            x = _unpermute(x, heads)
        if arch_name == "gemma3" and hf_name.endswith("norm.weight"):
            x = x - np.float32(1.0)  # Gemma3Model.modify_tensors stores 1 + w
        state[hf_name] = torch.from_numpy(np.ascontiguousarray(x))
    used = {names.get_name(k, try_suffixes=(".weight", ".bias")) for k in state}
    left = set(tensors) - used
    assert not left, f"GGUF tensors not mapped back: {sorted(left)}"
    return state


def _unpermute(x, n_head: int):
    """Inverse of LlamaModel.permute: rows (head, half, i) <- (head, i, half)."""
    rows = x.shape[0]
    return x.reshape(n_head, rows // n_head // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


# ---------------------------------------------------------------- stage llamacpp (oracle venv)

def stage_llamacpp(work: Path, which: str) -> None:
    """`quantize`: llama_model_quantize for every ("quantize", ...) entry; `logits`: llama.cpp logits."""
    import llama_cpp
    import numpy as np

    if which == "quantize":
        for gname, (_, how) in GGUFS.items():
            if how[0] != "quantize":
                continue
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{how[1]}")
            params.nthread = 2
            keep_alive = None
            if len(how) > 3:  # NULL-terminated (regex, ggml type) array, as llama-quantize builds it
                import gguf

                types = {k: int(gguf.GGMLQuantizationType[v]) for k, v in how[3].items()}
                keep_alive = (llama_cpp.llama_model_tensor_override * (len(types) + 1))(
                    *[llama_cpp.llama_model_tensor_override(rf"{k}\.weight".encode(), t) for k, t in types.items()],
                    llama_cpp.llama_model_tensor_override(None, 0))
                params.tt_overrides = keep_alive
                if "token_embd" in types:
                    params.token_embedding_type = types["token_embd"]
            src, dst = work / f"{how[2]}.gguf", work / f"{gname}.gguf"
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
            assert rc == 0, (gname, rc)
            print(f"quantized {gname}")
        return
    for gname, (model_name, _) in GGUFS.items():
        tokens = np.load(work / "hf" / f"{model_name}.npz")["tokens"]
        llm = llama_cpp.Llama(str(work / f"{gname}.gguf"), n_ctx=64, n_batch=64, n_threads=2,
                              logits_all=True, verbose=False, seed=0)
        llm.eval(tokens.tolist())
        logits = np.array(llm.scores[: len(tokens)], dtype=np.float32)
        np.save(work / f"{gname}.logits_llamacpp.npy", logits)
        print(f"llama.cpp {gname}: logits std {logits.std():.2f}")
        del llm


# ---------------------------------------------------------------- driver

def _versions(torch_py: str, llama_py: str) -> dict:
    def ask(py: str, code: str) -> str:
        return subprocess.run([py, "-c", code], capture_output=True, text=True, check=True).stdout.strip()

    gguf_py = ask(sys.executable, f"import tomllib;print(tomllib.load(open('{LLAMA_CPP}/gguf-py/pyproject.toml','rb'))"
                                  "['project']['version'])")
    return {"torch": ask(torch_py, "import torch;print(torch.__version__)"),
            "transformers": ask(torch_py, "import transformers;print(transformers.__version__)"),
            "llama_cpp_python": ask(llama_py, "import llama_cpp;print(llama_cpp.__version__)"),
            "convert_hf_to_gguf": f"vendored in llama_cpp_python-{ask(llama_py, 'import llama_cpp;print(llama_cpp.__version__)')} sdist",
            "gguf_py": gguf_py}


def _tensor_types(gguf_path: Path) -> dict:
    sys.path.insert(0, str(LLAMA_CPP / "gguf-py"))
    import gguf

    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(gguf_path).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


def main() -> None:
    global LLAMA_CPP
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["all", "hf", "convert", "oracle", "llamacpp"], default="all")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tiny_ggufs"))
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "gguf")
    ap.add_argument("--llama-cpp", type=Path, default=LLAMA_CPP,
                    help="llama.cpp source tree with convert_hf_to_gguf.py and gguf-py/")
    ap.add_argument("--torch-python", default="/work/torchenv/bin/python")
    ap.add_argument("--llama-python", default="/work/oracle/bin/python")
    ap.add_argument("--hf-dir", type=Path)
    ap.add_argument("--outtype")
    ap.add_argument("--outfile", type=Path)
    ap.add_argument("--which", choices=["quantize", "logits"])
    ap.add_argument("--resume", choices=["convert", "quantize", "oracle", "logits", "copy"],
                    help="skip the steps before this one (their outputs are in --work)")
    args = ap.parse_args()
    LLAMA_CPP = args.llama_cpp.resolve()
    if args.stage == "hf":
        return stage_hf(args.work)
    if args.stage == "convert":
        return stage_convert(args.hf_dir, args.outtype, args.outfile)
    if args.stage == "oracle":
        return stage_oracle(args.work)
    if args.stage == "llamacpp":
        return stage_llamacpp(args.work, args.which)

    import numpy as np

    me = str(Path(__file__).resolve())
    w = str(args.work)

    def run(py: str, *extra: str) -> None:
        subprocess.run([py, me, "--work", w, "--llama-cpp", str(LLAMA_CPP), *extra], check=True)

    steps = ["hf", "convert", "quantize", "oracle", "logits", "copy"]
    todo = steps[steps.index(args.resume or "hf"):]
    if "hf" in todo:
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)
        run(args.torch_python, "--stage", "hf")
    if "convert" in todo:
        for gname, (model_name, how) in GGUFS.items():
            if how[0] == "convert":
                run(args.torch_python, "--stage", "convert", "--hf-dir", str(args.work / "hf" / model_name),
                    "--outtype", how[1], "--outfile", str(args.work / f"{gname}.gguf"))
    if "quantize" in todo:
        run(args.llama_python, "--stage", "llamacpp", "--which", "quantize")
    if "oracle" in todo:
        run(args.torch_python, "--stage", "oracle")
    if "logits" in todo:
        run(args.llama_python, "--stage", "llamacpp", "--which", "logits")

    versions = _versions(args.torch_python, args.llama_python)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in list(args.out.glob("*.gguf")) + list(args.out.glob("*.npz")):
        old.unlink()
    for gname, (model_name, how) in GGUFS.items():
        if gname in KEEP_OUT:
            continue
        src = args.work / f"{gname}.gguf"
        shutil.copyfile(src, args.out / f"{gname}.gguf")
        hf_logits = np.load(args.work / f"{gname}.logits_hf.npy")
        cpp_logits = np.load(args.work / f"{gname}.logits_llamacpp.npy")
        print(f"{gname}: max |llama.cpp - transformers| {np.abs(hf_logits - cpp_logits).max():.3g} "
              f"(logits std {hf_logits.std():.2f})")
        hf_config = json.loads((args.work / "hf" / f"{model_name}.config.json").read_text())
        meta = {"model": model_name, "made_by": list(how), "hf_config": hf_config,
                "tensor_types": _tensor_types(src), "versions": versions}
        np.savez_compressed(
            args.out / f"{gname}.npz",
            tokens=np.load(args.work / "hf" / f"{model_name}.npz")["tokens"],
            logits_hf=hf_logits, logits_llamacpp=cpp_logits.astype(np.float16),
            meta=np.array(json.dumps(meta)))
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
