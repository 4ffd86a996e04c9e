// Gemma 3 (text). port of mlxedge/backends/numpy/gemma3.py (itself a port of mlx_lm/models/gemma3_text.py).
// What sets it apart from llama:
// - RMSNorm scales by (1 + w), for the block norms, the final norm and the q/k head norms;
// - four norms per block: after attention and around the MLP (sandwich norms);
// - the embedding is multiplied by sqrt(hidden_size), rounded to bfloat16 as mlx-lm does;
// - layers slide over `sliding_window` positions except every `sliding_window_pattern`-th one;
//   sliding layers use `rope_local_base_freq` and no scaling, global ones `rope_theta` + `rope_scaling`;
// - attention scale is query_pre_attn_scalar ** -0.5; the MLP uses tanh-approximated GELU.

struct Gemma3Block: DecoderBlock {
    let q_proj, k_proj, v_proj, o_proj: Linear
    let core: AttentionCore
    let gate_proj, up_proj, down_proj: Linear
    let input_layernorm, post_attention_layernorm, pre_feedforward_layernorm, post_feedforward_layernorm: [Float]
    let eps: Float

    func callAsFunction(_ x: [Float], T: Int, cache: KVCache, layer: Int) -> [Float] {
        let a = rmsNorm(x, input_layernorm, eps: eps)
        let attn = o_proj(core(q: q_proj(a, rows: T), k: k_proj(a, rows: T), v: v_proj(a, rows: T),
                               T: T, cache: cache, layer: layer), rows: T)
        let h = add(x, rmsNorm(attn, post_attention_layernorm, eps: eps))
        let m = rmsNorm(h, pre_feedforward_layernorm, eps: eps)
        let mlp = down_proj(gated(gate_proj(m, rows: T), up_proj(m, rows: T), geluApprox), rows: T)
        return add(h, rmsNorm(mlp, post_feedforward_layernorm, eps: eps))
    }
}

/// Round to the nearest bfloat16 (ties to even).
func roundToBF16(_ x: Float) -> Float {
    let u = x.bitPattern
    return Float(bitPattern: (u &+ 0x7FFF &+ ((u >> 16) & 1)) & 0xFFFF_0000)
}

func buildGemma3(_ w: Weights, _ c: ModelConfiguration) throws -> CausalLM {
    let eps = Float(c.rmsNormEps ?? 1e-6)
    let (H, nHeads) = (c.hiddenSize, c.numAttentionHeads)
    let nKV = c.numKeyValueHeads ?? 1
    let D = c.headDim ?? 256
    let pattern = c.slidingWindowPattern ?? 6
    let scale = Float(1 / (c.queryPreAttnScalar ?? 256).squareRoot())
    let local = try makeRope(dims: D, base: c.ropeLocalBaseFreq ?? 10_000)
    let global = try makeRope(dims: D, base: c.ropeTheta ?? 1_000_000, scaling: c.ropeScaling,
                              maxPositionEmbeddings: c.maxPositionEmbeddings ?? 32768)
    func plusOne(_ v: [Float]) -> [Float] { v.map { 1 + $0 } }

    var blocks: [any DecoderBlock] = []
    for i in 0..<c.numHiddenLayers {
        let p = "model.layers.\(i)"
        let sliding = (i + 1) % pattern != 0
        let core = AttentionCore(
            nHeads: nHeads, nKV: nKV, headDim: D, scale: scale,
            window: sliding ? (c.slidingWindow ?? 512) : nil, rope: sliding ? local : global,
            qNorm: plusOne(try w.vector("\(p).self_attn.q_norm.weight", count: D)),
            kNorm: plusOne(try w.vector("\(p).self_attn.k_norm.weight", count: D)), eps: eps)
        let I = c.intermediateSize
        blocks.append(Gemma3Block(
            q_proj: try w.linear("\(p).self_attn.q_proj", in: H, out: nHeads * D),
            k_proj: try w.linear("\(p).self_attn.k_proj", in: H, out: nKV * D),
            v_proj: try w.linear("\(p).self_attn.v_proj", in: H, out: nKV * D),
            o_proj: try w.linear("\(p).self_attn.o_proj", in: nHeads * D, out: H), core: core,
            gate_proj: try w.linear("\(p).mlp.gate_proj", in: H, out: I),
            up_proj: try w.linear("\(p).mlp.up_proj", in: H, out: I),
            down_proj: try w.linear("\(p).mlp.down_proj", in: I, out: H),
            input_layernorm: plusOne(try w.vector("\(p).input_layernorm.weight", count: H)),
            post_attention_layernorm: plusOne(try w.vector("\(p).post_attention_layernorm.weight", count: H)),
            pre_feedforward_layernorm: plusOne(try w.vector("\(p).pre_feedforward_layernorm.weight", count: H)),
            post_feedforward_layernorm: plusOne(try w.vector("\(p).post_feedforward_layernorm.weight", count: H)),
            eps: eps))
    }
    let embed = try w.linear("model.embed_tokens", in: H, out: c.vocabSize)
    // As mlx-lm's sanitize decides: tied exactly when the checkpoint has no lm_head.
    let lmHead = w.has("lm_head.weight") ? try w.linear("lm_head", in: H, out: c.vocabSize) : embed
    let norm = plusOne(try w.vector("model.norm.weight", count: H))
    return CausalLM(config: c, embedding: embed, blocks: blocks, norm: { rmsNorm($0, norm, eps: eps) },
                    lmHead: lmHead, embedScale: roundToBF16(Float(H).squareRoot()), kvHeads: nKV, headDim: D)
}
