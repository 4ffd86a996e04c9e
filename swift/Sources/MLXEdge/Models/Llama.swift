// Llama-family decoders: llama, mistral, qwen2, qwen3.
// port of mlxedge/backends/numpy/llama.py (itself a port of mlx_lm/models/llama.py, qwen2.py, qwen3.py).
// - qwen2: q/k/v projections carry biases (any projection with a `.bias` tensor gets one here);
// - qwen3: RMSNorm on each query/key head (`q_norm`, `k_norm`) before RoPE; explicit head_dim;
// - llama: optional `layer_types` with "sliding_attention" layers limited to `sliding_window`.

struct LlamaAttention: Sendable {
    let q_proj, k_proj, v_proj, o_proj: Linear
    let core: AttentionCore

    func callAsFunction(_ x: [Float], T: Int, cache: KVCache, layer: Int) -> [Float] {
        let out = core(q: q_proj(x, rows: T), k: k_proj(x, rows: T), v: v_proj(x, rows: T), T: T, cache: cache, layer: layer)
        return o_proj(out, rows: T)
    }
}

struct LlamaMLP: Sendable {
    let gate_proj, up_proj, down_proj: Linear

    func callAsFunction(_ x: [Float], T: Int) -> [Float] {
        down_proj(gated(gate_proj(x, rows: T), up_proj(x, rows: T), silu), rows: T)
    }
}

struct LlamaBlock: DecoderBlock {
    let self_attn: LlamaAttention
    let mlp: LlamaMLP
    let input_layernorm, post_attention_layernorm: [Float]
    let eps: Float

    func callAsFunction(_ x: [Float], T: Int, cache: KVCache, layer: Int) -> [Float] {
        let h = add(x, self_attn(rmsNorm(x, input_layernorm, eps: eps), T: T, cache: cache, layer: layer))
        return add(h, mlp(rmsNorm(h, post_attention_layernorm, eps: eps), T: T))
    }
}

func buildLlama(_ w: Weights, _ c: ModelConfiguration) throws -> CausalLM {
    guard let epsD = c.rmsNormEps else { throw MLXEdgeError.badTensor("config.json has no rms_norm_eps") }
    let eps = Float(epsD)
    let (H, nHeads) = (c.hiddenSize, c.numAttentionHeads)
    let nKV = c.numKeyValueHeads ?? nHeads
    // mlx-lm's qwen2 derives head_dim from the hidden size, ignoring the config key.
    let D = c.modelType == "qwen2" ? H / nHeads : (c.headDim ?? H / nHeads)
    var scaling = c.ropeScaling
    var theta = c.ropeTheta
    if c.modelType == "qwen3", let params = c.ropeParameters {  // transformers 5 nests them
        theta = theta ?? params["rope_theta"]?.double
        scaling = scaling ?? params
    }
    let traditional = c.modelType == "qwen3" ? false : (c.ropeTraditional ?? false)
    let rope = try makeRope(dims: D, base: theta ?? (c.modelType == "qwen2" ? 1_000_000 : 10_000),
                            traditional: traditional, scaling: scaling, maxPositionEmbeddings: c.maxPositionEmbeddings)
    let layerTypes = c.layerTypes ?? Array(repeating: "full_attention", count: c.numHiddenLayers)
    let qk = c.modelType == "qwen3"

    var blocks: [any DecoderBlock] = []
    for i in 0..<c.numHiddenLayers {
        let p = "model.layers.\(i)"
        let core = AttentionCore(
            nHeads: nHeads, nKV: nKV, headDim: D, scale: 1 / Float(D).squareRoot(),
            window: layerTypes[i] == "sliding_attention" ? c.slidingWindow : nil, rope: rope,
            qNorm: qk ? try w.vector("\(p).self_attn.q_norm.weight", count: D) : nil,
            kNorm: qk ? try w.vector("\(p).self_attn.k_norm.weight", count: D) : nil, eps: eps)
        let attn = LlamaAttention(
            q_proj: try w.linear("\(p).self_attn.q_proj", in: H, out: nHeads * D),
            k_proj: try w.linear("\(p).self_attn.k_proj", in: H, out: nKV * D),
            v_proj: try w.linear("\(p).self_attn.v_proj", in: H, out: nKV * D),
            o_proj: try w.linear("\(p).self_attn.o_proj", in: nHeads * D, out: H), core: core)
        let I = c.intermediateSize
        let mlp = LlamaMLP(gate_proj: try w.linear("\(p).mlp.gate_proj", in: H, out: I),
                           up_proj: try w.linear("\(p).mlp.up_proj", in: H, out: I),
                           down_proj: try w.linear("\(p).mlp.down_proj", in: I, out: H))
        blocks.append(LlamaBlock(self_attn: attn, mlp: mlp,
                                 input_layernorm: try w.vector("\(p).input_layernorm.weight", count: H),
                                 post_attention_layernorm: try w.vector("\(p).post_attention_layernorm.weight", count: H),
                                 eps: eps))
    }
    let tied = c.tieWordEmbeddings ?? true
    let embed = try w.linear("model.embed_tokens", in: H, out: c.vocabSize)
    let lmHead = tied ? embed : try w.linear("lm_head", in: H, out: c.vocabSize)
    if tied { w.markUsed { $0.hasPrefix("lm_head.") } }  // mlx-lm drops a stray lm_head when tied
    w.markUsed { $0.contains("rotary_emb.inv_freq") }
    let norm = try w.vector("model.norm.weight", count: H)
    return CausalLM(config: c, embedding: embed, blocks: blocks, norm: { rmsNorm($0, norm, eps: eps) },
                    lmHead: lmHead, kvHeads: nKV, headDim: D)
}
