import Foundation

/// Counts and timings of one generation.
public struct GenerationInfo: Sendable {
    public var promptTokens = 0
    public var generatedTokens = 0
    public var prefillSeconds = 0.0
    public var generateSeconds = 0.0
    public var promptTokensPerSecond: Double { prefillSeconds > 0 ? Double(promptTokens) / prefillSeconds : 0 }
    public var tokensPerSecond: Double { generateSeconds > 0 ? Double(generatedTokens) / generateSeconds : 0 }
    /// Why generation ended: "eos", "stop", "length" or "cancelled".
    public var finishReason = "length"
}

/// Holds back text that could still turn into a stop string, and cuts the output at one.
struct StopMatcher {
    let stops: [String]
    private var pending = ""
    private(set) var stopped = false

    init(_ stops: [String]) { self.stops = stops.filter { !$0.isEmpty } }

    /// Text that is safe to show after adding `piece`.
    mutating func add(_ piece: String) -> String {
        guard !stops.isEmpty, !stopped else { return stopped ? "" : piece }
        pending += piece
        if let cut = stops.compactMap({ pending.range(of: $0)?.lowerBound }).min() {
            stopped = true
            defer { pending = "" }
            return String(pending[..<cut])
        }
        // Keep the longest suffix that is a prefix of a stop string.
        let hold = stops.map { s in
            (1..<max(1, min(s.count, pending.count + 1))).reversed().first { pending.hasSuffix(s.prefix($0)) } ?? 0
        }.max() ?? 0
        let out = String(pending.dropLast(hold))
        pending = String(pending.suffix(hold))
        return out
    }

    mutating func finish() -> String {
        defer { pending = "" }
        return stopped ? "" : pending
    }
}

/// The generation loop shared by `MLXEdgeModel` and `ChatSession`: prefill `tokens` after what
/// `cache` holds, then sample until EOS, a stop string or `maxTokens`. `onText` gets each new piece
/// of text and returns false to cancel. Returns the generated ids (the cache holds all but the last).
func generateLoop(model: CausalLM, tokenizer: Tokenizer, eos: Set<Int>, tokens: [Int], history: [Int],
                  cache: KVCache, parameters: GenerateParameters,
                  onText: (String) -> Bool) throws -> ([Int], GenerationInfo) {
    try parameters.validate()
    var info = GenerationInfo(promptTokens: tokens.count)
    var sampler = Sampler(parameters)
    var detok = StreamingDetokenizer(tokenizer: tokenizer)
    var stopper = StopMatcher(parameters.stop)
    var generated: [Int] = []
    var all = history + tokens

    let t0 = DispatchTime.now().uptimeNanoseconds
    var logits: [Float] = []
    var start = 0
    while start < tokens.count {
        let end = min(tokens.count, start + parameters.prefillStepSize)
        logits = try model.forward(Array(tokens[start..<end]), cache: cache, lastOnly: true)
        start = end
    }
    let t1 = DispatchTime.now().uptimeNanoseconds
    info.prefillSeconds = Double(t1 - t0) / 1e9
    let limit = parameters.maxTokens ?? Int.max
    while generated.count < limit {
        if Task.isCancelled { info.finishReason = "cancelled"; break }
        let next = sampler.sample(logits, history: all)
        if eos.contains(next) { info.finishReason = "eos"; break }
        generated.append(next)
        all.append(next)
        let text = stopper.add(detok.append(next))
        if !text.isEmpty, !onText(text) { info.finishReason = "cancelled"; break }
        if stopper.stopped { info.finishReason = "stop"; break }
        if generated.count < limit { logits = try model.forward([next], cache: cache, lastOnly: true) }
    }
    if info.finishReason != "stop" && info.finishReason != "cancelled" {
        let rest = stopper.add(detok.finish()) + stopper.finish()
        if !rest.isEmpty { _ = onText(rest) }
    }
    info.generatedTokens = generated.count
    info.generateSeconds = Double(DispatchTime.now().uptimeNanoseconds - t1) / 1e9
    return (generated, info)
}
