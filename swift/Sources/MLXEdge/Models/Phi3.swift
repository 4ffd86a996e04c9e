// Phi-3. port of mlxedge/backends/numpy/phi3.py (itself a port of mlx_lm/models/phi3.py).
// Llama-like, but with fused projections stored in the checkpoint: `qkv_proj` (q, then k, then v
// along the output axis) and `gate_up_proj` (gate first, then up). RoPE may cover only the first
// `partial_rotary_factor` of each head, and may be "longrope"/"su" scaled (always with the long
// factors, as mlx-lm does) or "linear".

struct Phi3Block: DecoderBlock {
    let qkv_proj, o_proj, gate_up_proj, down_proj: Linear
    let core: AttentionCore
    let input_layernorm, post_attention_layernorm: [Float]
    let eps: Float

    func callAsFunction(_ x: [Float], T: Int, cache: KVCache, layer: Int) -> [Float] {
        let (nq, nkv) = (core.nHeads * core.headDim, core.nKV * core.headDim)
        let qkv = qkv_proj(rmsNorm(x, input_layernorm, eps: eps), rows: T)  // (T, nq + 2 nkv)
        let width = nq + 2 * nkv
        let attn = core(q: columns(qkv, rows: T, width: width, 0, nq),
                        k: columns(qkv, rows: T, width: width, nq, nq + nkv),
                        v: columns(qkv, rows: T, width: width, nq + nkv, width), T: T, cache: cache, layer: layer)
        let h = add(x, o_proj(attn, rows: T))
        let gu = gate_up_proj(rmsNorm(h, post_attention_layernorm, eps: eps), rows: T)  // (T, 2 I)
        let I = gate_up_proj.outFeatures / 2
        let act = gated(columns(gu, rows: T, width: 2 * I, 0, I), columns(gu, rows: T, width: 2 * I, I, 2 * I), silu)
        return add(h, down_proj(act, rows: T))
    }
}

func buildPhi3(_ w: Weights, _ c: ModelConfiguration) throws -> CausalLM {
    guard let epsD = c.rmsNormEps else { throw MLXEdgeError.badTensor("config.json has no rms_norm_eps") }
    let eps = Float(epsD)
    let (H, nHeads) = (c.hiddenSize, c.numAttentionHeads)
    let nKV = c.numKeyValueHeads ?? nHeads
    let D = H / nHeads
    let dims = Int(Double(D) * (c.partialRotaryFactor ?? 1))
    var scaling = c.ropeScaling
    let kind = scaling?["type"]?.string
    if let k = kind, !["longrope", "su", "linear"].contains(k) { scaling = nil }  // mlx-lm ignores others
    if var s = scaling, kind == "longrope" || kind == "su" {
        s["original_max_position_embeddings"] = .number(Double(c.originalMaxPositionEmbeddings ?? 4096))
        scaling = s
    }
    let rope = try makeRope(dims: dims, base: c.ropeTheta ?? 10_000, traditional: c.ropeTraditional ?? false,
                            scaling: scaling, maxPositionEmbeddings: c.maxPositionEmbeddings ?? 131072)
    let I = c.intermediateSize
    var blocks: [any DecoderBlock] = []
    for i in 0..<c.numHiddenLayers {
        let p = "model.layers.\(i)"
        blocks.append(Phi3Block(
            qkv_proj: try w.linear("\(p).self_attn.qkv_proj", in: H, out: (nHeads + 2 * nKV) * D),
            o_proj: try w.linear("\(p).self_attn.o_proj", in: nHeads * D, out: H),
            gate_up_proj: try w.linear("\(p).mlp.gate_up_proj", in: H, out: 2 * I),
            down_proj: try w.linear("\(p).mlp.down_proj", in: I, out: H),
            core: AttentionCore(nHeads: nHeads, nKV: nKV, headDim: D, scale: 1 / Float(D).squareRoot(), window: nil, rope: rope),
            input_layernorm: try w.vector("\(p).input_layernorm.weight", count: H),
            post_attention_layernorm: try w.vector("\(p).post_attention_layernorm.weight", count: H), eps: eps))
    }
    let tied = c.tieWordEmbeddings ?? false
    let embed = try w.linear("model.embed_tokens", in: H, out: c.vocabSize)
    let lmHead = tied ? embed : try w.linear("lm_head", in: H, out: c.vocabSize)
    let norm = try w.vector("model.norm.weight", count: H)
    return CausalLM(config: c, embedding: embed, blocks: blocks, norm: { rmsNorm($0, norm, eps: eps) },
                    lmHead: lmHead, kvHeads: nKV, headDim: D)
}
