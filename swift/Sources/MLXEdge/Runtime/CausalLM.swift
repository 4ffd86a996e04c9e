import Foundation

/// One transformer block: h (T, hidden) -> (T, hidden), reading and extending `cache` at `layer`.
protocol DecoderBlock: Sendable {
    func callAsFunction(_ h: [Float], T: Int, cache: KVCache, layer: Int) -> [Float]
}

/// The decoder every architecture shares: embed -> blocks -> norm -> lm_head
/// (port of mlxedge/backends/numpy/model.py).
public final class CausalLM: Sendable {
    public let config: ModelConfiguration
    let embedding: Linear  // (vocab, hidden): rows are looked up, and it is the lm_head when tied
    let blocks: [any DecoderBlock]
    let norm: @Sendable ([Float]) -> [Float]
    let lmHead: Linear
    let embedScale: Float
    let kvHeads: Int
    let headDim: Int

    init(config: ModelConfiguration, embedding: Linear, blocks: [any DecoderBlock],
         norm: @escaping @Sendable ([Float]) -> [Float], lmHead: Linear, embedScale: Float = 1, kvHeads: Int, headDim: Int) {
        self.config = config
        self.embedding = embedding
        self.blocks = blocks
        self.norm = norm
        self.lmHead = lmHead
        self.embedScale = embedScale
        self.kvHeads = kvHeads
        self.headDim = headDim
    }

    public var vocabularySize: Int { lmHead.outFeatures }
    public var hiddenSize: Int { embedding.inFeatures }

    /// An empty cache; keep it across calls for incremental decoding.
    public func makeCache() -> KVCache { KVCache(layers: blocks.count, kvHeads: kvHeads, headDim: headDim) }

    /// Logits (T, vocab) for `tokens` placed after what `cache` holds; the cache is extended.
    /// `lastOnly` returns just the last position's logits (vocab).
    public func forward(_ tokens: [Int], cache: KVCache, lastOnly: Bool = false) throws -> [Float] {
        guard !tokens.isEmpty else { throw MLXEdgeError.invalidArgument("forward needs at least one token") }
        let vocab = embedding.outFeatures
        if let bad = tokens.first(where: { $0 < 0 || $0 >= vocab }) {
            throw MLXEdgeError.invalidArgument("token id \(bad) is out of range 0..<\(vocab)")
        }
        let T = tokens.count, H = hiddenSize
        var h = [Float](repeating: 0, count: T * H)  // (T, hidden)
        h.withUnsafeMutableBufferPointer { hp in
            for (t, id) in tokens.enumerated() { embedding.row(id, into: hp.baseAddress! + t * H) }
        }
        if embedScale != 1 { for i in 0..<h.count { h[i] *= embedScale } }
        for (i, block) in blocks.enumerated() { h = block(h, T: T, cache: cache, layer: i) }
        cache.advance(T)
        if lastOnly { h = Array(h[((T - 1) * H)...]) }
        return lmHead(norm(h), rows: lastOnly ? 1 : T)
    }
}

/// Build the model for `bundle.config.modelType` (one file per family in Models/).
public func loadModel(_ bundle: ModelBundle) throws -> CausalLM {
    let w = Weights(bundle)
    let model: CausalLM
    switch bundle.config.modelType {
    case "llama", "mistral", "qwen2", "qwen3": model = try buildLlama(w, bundle.config)
    case "gemma3_text": model = try buildGemma3(w, bundle.config)
    case "phi3": model = try buildPhi3(w, bundle.config)
    default:
        throw MLXEdgeError.unsupported("model_type \(bundle.config.modelType) (llama, mistral, qwen2, qwen3, gemma3_text and phi3 are supported)")
    }
    try w.checkAllUsed()
    return model
}
