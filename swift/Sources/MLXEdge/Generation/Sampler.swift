import Foundation

/// What decides the next token (mlx-lm's defaults: greedy, no filtering, no penalty).
public struct GenerateParameters: Sendable {
    /// Stop after this many new tokens (nil: until end of sequence).
    public var maxTokens: Int? = 256
    /// 0 is greedy (argmax).
    public var temperature: Float = 0
    public var topP: Float = 1
    public var topK: Int = 0
    public var minP: Float = 0
    public var minTokensToKeep: Int = 1
    /// Divides positive / multiplies negative logits of tokens seen in the last `repetitionContextSize`.
    public var repetitionPenalty: Float? = nil
    public var repetitionContextSize: Int = 20
    public var seed: UInt64? = nil
    /// Generation ends before any of these strings; they are not part of the output.
    public var stop: [String] = []
    /// Prompt tokens run per forward pass.
    public var prefillStepSize: Int = 512

    public init(maxTokens: Int? = 256, temperature: Float = 0, topP: Float = 1, topK: Int = 0, minP: Float = 0,
                repetitionPenalty: Float? = nil, repetitionContextSize: Int = 20, seed: UInt64? = nil,
                stop: [String] = []) {
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.minP = minP
        self.repetitionPenalty = repetitionPenalty
        self.repetitionContextSize = repetitionContextSize
        self.seed = seed
        self.stop = stop
    }

    /// Throws `invalidArgument` naming the first bad value.
    public func validate() throws {
        if temperature < 0 { throw MLXEdgeError.invalidArgument("--temp must be >= 0, got \(temperature)") }
        if !(0...1).contains(topP) { throw MLXEdgeError.invalidArgument("--top-p must be in [0, 1], got \(topP)") }
        if topK < 0 { throw MLXEdgeError.invalidArgument("--top-k must be >= 0, got \(topK)") }
        if !(0...1).contains(minP) { throw MLXEdgeError.invalidArgument("--min-p must be in [0, 1], got \(minP)") }
        if let r = repetitionPenalty, r < 0 { throw MLXEdgeError.invalidArgument("--repetition-penalty must be >= 0, got \(r)") }
        if let m = maxTokens, m < 0 { throw MLXEdgeError.invalidArgument("--max-tokens must be >= 0, got \(m)") }
        if repetitionContextSize < 1 || prefillStepSize < 1 || minTokensToKeep < 1 {
            throw MLXEdgeError.invalidArgument("context sizes must be >= 1")
        }
    }
}

/// Picks next tokens from logits with mlx-lm's order of operations (mlx_lm/sample_utils.py,
/// ported from mlxedge/sampling.py): repetition penalty -> log-softmax -> top-p -> min-p -> top-k
/// on the untempered log-probabilities -> sample from softmax(logprobs / temperature).
public struct Sampler: Sendable {
    public let parameters: GenerateParameters
    private var rng: SplitMix64

    public init(_ parameters: GenerateParameters) {
        self.parameters = parameters
        rng = SplitMix64(seed: parameters.seed ?? UInt64.random(in: 0...UInt64.max))
    }

    /// The next token for `logits` (vocab), given the tokens so far (prompt included).
    public mutating func sample(_ logits: [Float], history: [Int]) -> Int {
        let p = parameters
        var x = logits
        if let penalty = p.repetitionPenalty, penalty != 0 {
            for id in Set(history.suffix(p.repetitionContextSize)) where id >= 0 && id < x.count {
                x[id] = x[id] < 0 ? x[id] * penalty : x[id] / penalty
            }
        }
        if p.temperature == 0 { return argmax(x) }  // the filters never remove the top token
        var lp = logSoftmax(x)
        if p.topP > 0 && p.topP < 1 { applyTopP(&lp, p.topP) }
        if p.minP != 0 { applyMinP(&lp, p.minP, keep: p.minTokensToKeep) }
        if p.topK > 0 && p.topK < lp.count { applyTopK(&lp, p.topK) }
        // Gumbel-max: argmax(x / T + Gumbel noise) is a draw from softmax(x / T).
        var best = 0
        var bestValue = -Float.infinity
        for i in 0..<lp.count where lp[i] > -Float.infinity {
            let u = max(rng.nextUniform(), Float.leastNormalMagnitude)
            let v = lp[i] / p.temperature - logf(-logf(u))
            if v > bestValue { bestValue = v; best = i }
        }
        return best
    }
}

func argmax(_ x: [Float]) -> Int {
    var best = 0
    for i in 1..<x.count where x[i] > x[best] { best = i }
    return best
}

func logSoftmax(_ x: [Float]) -> [Float] {
    let m = x.max() ?? 0
    var total: Float = 0
    for v in x { total += expf(v - m) }
    let lse = m + logf(total)
    return x.map { $0 - lse }
}

/// Keep the most likely tokens whose mass reaches topP: a token is dropped only if the tokens more
/// likely than it already hold at least topP of the mass.
func applyTopP(_ lp: inout [Float], _ topP: Float) {
    let order = lp.indices.sorted { lp[$0] > lp[$1] }
    var mass: Float = 0
    var cut = order.count
    for (rank, i) in order.enumerated() {
        if mass >= topP { cut = rank; break }
        mass += expf(lp[i])
    }
    guard cut < order.count else { return }
    let threshold = lp[order[cut - 1]]
    for i in lp.indices where lp[i] < threshold { lp[i] = -.infinity }
}

/// Drop tokens less likely than minP times the most likely one (keeping at least `keep`).
func applyMinP(_ lp: inout [Float], _ minP: Float, keep: Int) {
    let threshold = (lp.max() ?? 0) + logf(minP)
    let protected = keep > 1 ? Set(lp.indices.sorted { lp[$0] > lp[$1] }.prefix(keep)) : []
    for i in lp.indices where lp[i] < threshold && !protected.contains(i) { lp[i] = -.infinity }
}

/// Keep the topK most likely tokens.
func applyTopK(_ lp: inout [Float], _ k: Int) {
    let keep = Set(lp.indices.sorted { lp[$0] > lp[$1] }.prefix(k))
    for i in lp.indices where !keep.contains(i) { lp[i] = -.infinity }
}

/// A small, fast, seedable generator (Steele et al.'s SplitMix64).
struct SplitMix64: Sendable {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    mutating func nextUniform() -> Float { Float(next() >> 40) * 0x1p-24 }
}
