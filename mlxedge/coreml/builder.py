"""The decoder as a MIL program: embedding -> blocks -> final norm -> LM head, KV cache as state.

One program serves prefill and decode:
    inputs   input_ids (1, T) int32, T in 1..context;  position_offset (1,) int32
    states   key_cache_{i}, value_cache_{i}  (n_kv_heads, context, head_dim) float16, per layer
    output   logits (1, T, vocab) float32, or (1, 1, vocab) with last_only
The tokens take positions offset .. offset+T-1; their keys/values are written into the states
there and attention reads positions 0 .. offset+T-1 (the caller keeps offset + T <= context).

The architecture facts (heads, RoPE frequencies, sliding windows, norm conventions, embedding
scale, soft-capping) are read off the NumPy backend's model of the same bundle, loaded lean, so
both runtimes share one reading of config.json. Imported only by the export command.
"""

from __future__ import annotations

import numpy as np
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import Function, Program, get_new_symbol, types
import coremltools as ct

from .. import archs
from ..backends.numpy.decoder import NumpyModel
from ..errors import MlxEdgeError
from .layers import RopeTables, cached_attention, causal_mask, linear, rms_norm
from .weights import WeightMaker

FAMILIES = ("llama", "gemma3", "phi3")  # NumPy family modules the exporter builds


def family(config: dict) -> str:
    fam = archs.get(config.get("model_type")).NUMPY
    if fam not in FAMILIES:
        raise MlxEdgeError(f"the Core ML export does not build model_type {config.get('model_type')!r}")
    return fam


def state_names(n_layers: int) -> list[str]:
    return [f"{kind}_cache_{i}" for i in range(n_layers) for kind in ("key", "value")]


def build_program(model: NumpyModel, wm: WeightMaker, context: int, last_only: bool = False):
    """The MIL program (iOS 18 opset) of `model`'s bundle, its weights taken from `wm`."""
    cfg = model.config
    fam = family(cfg)
    n = len(model.blocks)
    attn0 = model.blocks[0].self_attn
    n_kv, head_dim = attn0.n_kv, attn0.head_dim
    for blk in model.blocks:
        if blk.self_attn.rope.dynamic is not None:
            raise MlxEdgeError("dynamic NTK RoPE scaling is not supported by the Core ML export")
    ropes: dict[int, RopeTables] = {}
    for blk in model.blocks:
        r = blk.self_attn.rope
        if id(r) not in ropes:
            ropes[id(r)] = RopeTables(r, context, str(len(ropes)))
    T = get_new_symbol()
    specs = [mb.TensorSpec((1, T), dtype=types.int32), mb.TensorSpec((1,), dtype=types.int32)]
    specs += [mb.StateTensorSpec((n_kv, context, head_dim), dtype=types.fp16) for _ in range(2 * n)]

    def main(inputs: dict):
        input_ids, position_offset = inputs["input_ids"], inputs["position_offset"]
        states = [inputs[s] for s in state_names(n)]
        h = mb.gather(x=wm.matrix("model.embed_tokens"), indices=input_ids, axis=0)  # (1, T, hidden)
        h = mb.cast(x=mb.squeeze(x=h, axes=[0]), dtype="fp32")                      # (T, hidden)
        if model.embed_scale != 1.0:
            h = mb.mul(x=h, y=np.float32(model.embed_scale), name="embed_scale")
        t = mb.slice_by_index(x=mb.shape(x=input_ids), begin=[1], end=[2])  # (1,) = T
        end = mb.add(x=position_offset, y=t)
        q_pos = mb.range_1d(start=mb.squeeze(x=position_offset), end=mb.squeeze(x=end), step=1)  # (T,)
        k_pos = mb.range_1d(start=0, end=mb.squeeze(x=end), step=1)                             # (end,)
        masks = {}
        for i, blk in enumerate(model.blocks):
            p = f"model.layers.{i}"
            window = getattr(blk.self_attn, "window", None)
            if window not in masks:
                masks[window] = causal_mask(q_pos, k_pos, window, f"mask_{window or 'full'}")
            ctx = (q_pos, end, position_offset, masks[window], ropes[id(blk.self_attn.rope)])
            h = _block(fam, blk, wm, p, h, states[2 * i], states[2 * i + 1], ctx)
        norm = "model.norm.weight"
        h = rms_norm(h, wm.vector(norm, plus_one=fam == "gemma3"), _eps(model.blocks[0]), "model_norm")
        if last_only:
            h = mb.gather(x=h, indices=mb.sub(x=t, y=1), axis=0)  # (1, hidden)
        tied = _tied(cfg, fam, wm)
        head = wm.matrix("model.embed_tokens" if tied else "lm_head")
        if tied:  # mlx-lm drops a stray lm_head when tied
            wm.used.update(k for k in wm.raw if k.startswith("lm_head."))
        logits = linear(h, head, None, "lm_head")
        if model.logit_softcap:
            c = np.float32(model.logit_softcap)
            logits = mb.mul(x=mb.tanh(x=mb.real_div(x=logits, y=c)), y=c)
        return mb.expand_dims(x=logits, axes=[0], name="logits")  # (1, T, vocab)

    wm.used.update(k for k in wm.raw if "rotary_emb.inv_freq" in k)
    names = ["input_ids", "position_offset"] + state_names(n)
    with Function(dict(zip(names, specs)), opset_version=ct.target.iOS18) as func:
        func.set_outputs([main(func.inputs)])
    prog = Program()
    prog.add_function("main", func)
    wm.check_all_used()
    return prog


def _tied(cfg: dict, fam: str, wm: WeightMaker) -> bool:
    if fam == "gemma3":  # as mlx-lm's sanitize decides
        return not wm.has("lm_head.weight")
    if fam == "phi3":
        return bool(cfg.get("tie_word_embeddings", False))
    return bool(cfg.get("tie_word_embeddings", True))


def _eps(blk) -> float:
    return float(blk.eps)


def _block(fam: str, blk, wm: WeightMaker, p: str, h, k_state, v_state, ctx):
    name = p.replace(".", "_")
    eps = _eps(blk)
    plus = fam == "gemma3"
    x = rms_norm(h, wm.vector(f"{p}.input_layernorm.weight", plus), eps, f"{name}_input_layernorm")
    r = _attention(fam, blk.self_attn, wm, f"{p}.self_attn", x, k_state, v_state, ctx)
    if fam == "gemma3":
        r = rms_norm(r, wm.vector(f"{p}.post_attention_layernorm.weight", True), eps,
                     f"{name}_post_attention_layernorm")
        h = mb.add(x=h, y=r, name=f"{name}_resid_attn")
        x = rms_norm(h, wm.vector(f"{p}.pre_feedforward_layernorm.weight", True), eps,
                     f"{name}_pre_feedforward_layernorm")
        r = _mlp(fam, wm, f"{p}.mlp", x)
        r = rms_norm(r, wm.vector(f"{p}.post_feedforward_layernorm.weight", True), eps,
                     f"{name}_post_feedforward_layernorm")
        return mb.add(x=h, y=r, name=f"{name}_resid_mlp")
    h = mb.add(x=h, y=r, name=f"{name}_resid_attn")
    x = rms_norm(h, wm.vector(f"{p}.post_attention_layernorm.weight"), eps, f"{name}_post_attention_layernorm")
    return mb.add(x=h, y=_mlp(fam, wm, f"{p}.mlp", x), name=f"{name}_resid_mlp")


def _proj(wm: WeightMaker, prefix: str, x):
    bias = wm.vector(f"{prefix}.bias") if wm.has(f"{prefix}.bias") else None
    return linear(x, wm.matrix(prefix), bias, prefix.replace(".", "_"))


def _attention(fam: str, attn, wm: WeightMaker, p: str, x, k_state, v_state, ctx):
    q_pos, end, offset, mask, rope = ctx
    H, K, D = attn.n_heads, attn.n_kv, attn.head_dim
    name = p.replace(".", "_")
    if fam == "phi3":  # fused qkv_proj: q, then k, then v along the output axis
        qkv = _proj(wm, f"{p}.qkv_proj", x)
        q, k, v = mb.split(x=qkv, split_sizes=[H * D, K * D, K * D], axis=-1)
    else:
        q, k, v = (_proj(wm, f"{p}.{n}_proj", x) for n in "qkv")
    q = mb.reshape(x=q, shape=[-1, H, D])  # (T, H, D)
    k = mb.reshape(x=k, shape=[-1, K, D])  # (T, K, D)
    v = mb.reshape(x=v, shape=[-1, K, D])
    if getattr(attn, "q_norm", None) is not None:  # qwen3, gemma3: RMSNorm per head before RoPE
        plus = fam == "gemma3"
        q = rms_norm(q, wm.vector(f"{p}.q_norm.weight", plus), attn.eps, f"{name}_q_norm")
        k = rms_norm(k, wm.vector(f"{p}.k_norm.weight", plus), attn.eps, f"{name}_k_norm")
    q = rope.apply(q, q_pos, D, f"{name}_q")
    k = rope.apply(k, q_pos, D, f"{name}_k")
    out = cached_attention(q, k, v, k_state, v_state, offset, end, mask, K, D, attn.scale, name)
    return _proj(wm, f"{p}.o_proj", out)


def _mlp(fam: str, wm: WeightMaker, p: str, x):
    if fam == "phi3":  # fused gate_up_proj: gate first, then up
        gate, up = mb.split(x=_proj(wm, f"{p}.gate_up_proj", x), num_splits=2, axis=-1)
    else:
        gate, up = _proj(wm, f"{p}.gate_proj", x), _proj(wm, f"{p}.up_proj", x)
    act = mb.gelu(x=gate, mode="TANH_APPROXIMATION") if fam == "gemma3" else mb.silu(x=gate)
    return _proj(wm, f"{p}.down_proj", mb.mul(x=act, y=up))
