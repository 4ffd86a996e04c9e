import Foundation

/// A conversation that keeps its history and KV cache between turns (like mlx-swift-lm's
/// `ChatSession`): each turn re-renders the chat template, reuses the cached prefix that still
/// matches, and only runs the new tokens.
public actor ChatSession {
    public let model: MLXEdgeModel
    public var parameters: GenerateParameters
    /// Extra template variables (tools, enable_thinking, ...).
    public var context: [String: Value]
    public private(set) var messages: [Value] = []
    /// Timings of the last turn.
    public private(set) var lastInfo = GenerationInfo()
    private let cache: KVCache
    /// The tokens whose keys/values `cache` holds, in order.
    private var cachedTokens: [Int] = []

    public init(_ model: MLXEdgeModel, instructions: String? = nil, parameters: GenerateParameters = GenerateParameters(),
                context: [String: Value] = [:]) {
        self.model = model
        self.parameters = parameters
        self.context = context
        cache = model.model.makeCache()
        if let instructions { messages.append(["role": "system", "content": .string(instructions)]) }
    }

    /// The model's reply to `prompt`, added to the history.
    public func respond(to prompt: String) async throws -> String {
        var out = ""
        try respond(to: prompt) { out += $0; return true }
        return out
    }

    /// The reply as it is produced.
    public nonisolated func streamResponse(to prompt: String) -> AsyncThrowingStream<String, Error> {
        pieceStream { emit in try await self.respond(to: prompt, onText: emit) }
    }

    /// Forget the conversation (the system instructions stay).
    public func reset() {
        messages = messages.filter { if case .object(let o) = $0 { return o["role"] == "system" }; return false }
        cache.reset()
        cachedTokens = []
    }

    private func respond(to prompt: String, onText: (String) -> Bool) throws {
        let turn = messages + [["role": "user", "content": .string(prompt)]]
        let text = try model.applyChatTemplate(messages: turn, addGenerationPrompt: true, context: context)
        let tokens = try model.encode(text)
        // Reuse the longest cached prefix; at least one token must run to produce logits.
        var common = zip(cachedTokens, tokens).prefix { $0 == $1 }.count
        common = min(common, tokens.count - 1)
        cache.trim(cache.offset - common)
        cachedTokens = Array(tokens[..<common])
        var reply = ""
        // The loop runs here, on this actor: the cache never leaves it; the model is immutable.
        let (generated, info) = try generateLoop(
            model: model.model, tokenizer: model.tokenizer, eos: model.eosTokenIds, tokens: Array(tokens[common...]),
            history: cachedTokens, cache: cache, parameters: parameters) { reply += $0; return onText($0) }
        lastInfo = info
        cachedTokens = Array((tokens + generated).prefix(cache.offset))
        messages = turn + [["role": "assistant", "content": .string(reply)]]
    }
}
