import Foundation

/// MLX affine quantization of one module: `w = scale * q + bias` per `groupSize` inputs.
public struct QuantizationSpec: Codable, Sendable, Equatable {
    public var groupSize: Int
    public var bits: Int
    public var mode: String

    public init(groupSize: Int, bits: Int, mode: String = "affine") {
        self.groupSize = groupSize
        self.bits = bits
        self.mode = mode
    }

    enum CodingKeys: String, CodingKey {
        case groupSize = "group_size", bits, mode
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        groupSize = try c.decode(Int.self, forKey: .groupSize)
        bits = try c.decode(Int.self, forKey: .bits)
        mode = try c.decodeIfPresent(String.self, forKey: .mode) ?? "affine"
    }
}

/// `config.json["quantization"]`: a default spec plus per-module overrides, where an override is
/// either another spec or `false` (that module stays in floating point). mlx-lm's format.
public struct QuantizationConfig: Codable, Sendable, Equatable {
    public enum Override: Sendable, Equatable {
        case quantized(QuantizationSpec)
        case notQuantized
    }

    public var base: QuantizationSpec
    public var overrides: [String: Override]

    public init(base: QuantizationSpec, overrides: [String: Override] = [:]) {
        self.base = base
        self.overrides = overrides
    }

    /// The spec for module `path` (e.g. "model.layers.0.mlp.down_proj"), nil if it is not quantized.
    public func spec(for path: String) -> QuantizationSpec? {
        switch overrides[path] {
        case .quantized(let s): return s
        case .notQuantized: return nil
        case nil: return base
        }
    }

    private struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }
    private static let baseKeys: Set<String> = ["group_size", "bits", "mode"]

    public init(from decoder: Decoder) throws {
        base = try QuantizationSpec(from: decoder)
        let c = try decoder.container(keyedBy: Key.self)
        var overrides: [String: Override] = [:]
        for key in c.allKeys where !Self.baseKeys.contains(key.stringValue) {
            if let flag = try? c.decode(Bool.self, forKey: key) {
                // `true` means "quantize with the default spec", as in mlx-lm's class predicate.
                overrides[key.stringValue] = flag ? .quantized(base) : .notQuantized
            } else {
                overrides[key.stringValue] = .quantized(try c.decode(QuantizationSpec.self, forKey: key))
            }
        }
        self.overrides = overrides
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(base.groupSize, forKey: Key(stringValue: "group_size"))
        try c.encode(base.bits, forKey: Key(stringValue: "bits"))
        try c.encode(base.mode, forKey: Key(stringValue: "mode"))
        for (path, o) in overrides {
            switch o {
            case .quantized(let s): try c.encode(s, forKey: Key(stringValue: path))
            case .notQuantized: try c.encode(false, forKey: Key(stringValue: path))
            }
        }
    }
}

/// `config.json` of a bundle: the Hugging Face keys that mlx-lm's llama / qwen2 / qwen3 /
/// gemma3_text / phi3 `ModelArgs` read, with their defaults applied in `Architecture`.
public struct ModelConfiguration: Codable, Sendable {
    public var modelType: String
    public var hiddenSize: Int
    public var numHiddenLayers: Int
    public var intermediateSize: Int
    public var numAttentionHeads: Int
    public var numKeyValueHeads: Int?
    public var headDim: Int?
    public var rmsNormEps: Double?
    public var vocabSize: Int
    public var ropeTheta: Double?
    public var ropeTraditional: Bool?
    public var ropeScaling: [String: JSONValue]?
    public var ropeParameters: [String: JSONValue]?
    public var ropeLocalBaseFreq: Double?
    public var partialRotaryFactor: Double?
    public var maxPositionEmbeddings: Int?
    public var originalMaxPositionEmbeddings: Int?
    public var attentionBias: Bool?
    public var mlpBias: Bool?
    public var tieWordEmbeddings: Bool?
    public var slidingWindow: Int?
    public var slidingWindowPattern: Int?
    public var layerTypes: [String]?
    public var queryPreAttnScalar: Double?
    public var bosTokenId: JSONValue?
    public var eosTokenId: JSONValue?
    public var quantization: QuantizationConfig?

    enum CodingKeys: String, CodingKey {
        case modelType = "model_type"
        case hiddenSize = "hidden_size"
        case numHiddenLayers = "num_hidden_layers"
        case intermediateSize = "intermediate_size"
        case numAttentionHeads = "num_attention_heads"
        case numKeyValueHeads = "num_key_value_heads"
        case headDim = "head_dim"
        case rmsNormEps = "rms_norm_eps"
        case vocabSize = "vocab_size"
        case ropeTheta = "rope_theta"
        case ropeTraditional = "rope_traditional"
        case ropeScaling = "rope_scaling"
        case ropeParameters = "rope_parameters"
        case ropeLocalBaseFreq = "rope_local_base_freq"
        case partialRotaryFactor = "partial_rotary_factor"
        case maxPositionEmbeddings = "max_position_embeddings"
        case originalMaxPositionEmbeddings = "original_max_position_embeddings"
        case attentionBias = "attention_bias"
        case mlpBias = "mlp_bias"
        case tieWordEmbeddings = "tie_word_embeddings"
        case slidingWindow = "sliding_window"
        case slidingWindowPattern = "sliding_window_pattern"
        case layerTypes = "layer_types"
        case queryPreAttnScalar = "query_pre_attn_scalar"
        case bosTokenId = "bos_token_id"
        case eosTokenId = "eos_token_id"
        case quantization
    }

    /// `eos_token_id` may be one integer or a list.
    public var eosTokenIds: [Int] {
        if let i = eosTokenId?.int { return [i] }
        return eosTokenId?.array?.compactMap(\.int) ?? []
    }
}
