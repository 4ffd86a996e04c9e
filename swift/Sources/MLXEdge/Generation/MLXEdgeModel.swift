import Foundation

/// A loaded bundle, ready to generate: the API is shaped like mlx-swift-lm's.
///
///     let model = try await MLXEdgeModel.load(directory: url)
///     let text = try await model.generate(prompt: "Hello", parameters: .init(maxTokens: 50))
///     for try await piece in model.stream(prompt: "Hello") { print(piece, terminator: "") }
///
/// The model is an actor: generations run one at a time; the weights stay memory-mapped.
public actor MLXEdgeModel {
    public nonisolated let bundle: ModelBundle
    public nonisolated let model: CausalLM
    public nonisolated let tokenizer: Tokenizer
    public nonisolated let chatTemplate: ChatTemplate?
    /// Ids that end generation: config, generation_config and the tokenizer's EOS.
    public nonisolated let eosTokenIds: Set<Int>
    /// Timings of the last generation.
    public internal(set) var lastInfo = GenerationInfo()

    public init(bundle: ModelBundle) throws {
        self.bundle = bundle
        model = try loadModel(bundle)
        tokenizer = try Tokenizer(tokenizerJSON: bundle.directory.appendingPathComponent("tokenizer.json"),
                                  config: bundle.tokenizerConfig)
        chatTemplate = try bundle.chatTemplate.map(ChatTemplate.init)
        var eos = bundle.eosTokenIds
        if let id = tokenizer.eosTokenId { eos.insert(id) }
        eosTokenIds = eos
    }

    /// Load a bundle directory (config.json, model*.safetensors, tokenizer.json, ...).
    public static func load(directory: URL) async throws -> MLXEdgeModel {
        try MLXEdgeModel(bundle: try ModelBundle.load(directory: directory))
    }

    /// Token ids of a raw prompt; BOS is added unless the text already starts with it (as mlx-lm does).
    public nonisolated func encode(_ prompt: String) throws -> [Int] {
        let addSpecial = tokenizer.bosToken.map { !prompt.hasPrefix($0) } ?? true
        return try tokenizer.encode(prompt, addSpecialTokens: addSpecial)
    }

    /// The chat template applied to `messages` (each with "role" and "content"), as text.
    public nonisolated func applyChatTemplate(messages: [[String: String]], addGenerationPrompt: Bool = true,
                                              context: [String: Value] = [:]) throws -> String {
        try applyChatTemplate(messages: messages.map { m in
            .object(OrderedObject(["role", "content"].compactMap { k in m[k].map { (k, .string($0)) } }
                + m.keys.filter { $0 != "role" && $0 != "content" }.sorted().map { ($0, .string(m[$0]!)) }))
        }, addGenerationPrompt: addGenerationPrompt, context: context)
    }

    public nonisolated func applyChatTemplate(messages: [Value], addGenerationPrompt: Bool = true,
                                              context: [String: Value] = [:]) throws -> String {
        guard let chatTemplate else { throw MLXEdgeError.template("this bundle has no chat template") }
        var vars = context
        vars["messages"] = .array(messages)
        vars["add_generation_prompt"] = .bool(addGenerationPrompt)
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] where vars[key] == nil {
            let v = bundle.tokenizerConfig?[key]
            if let s = v?.string ?? v?["content"]?.string { vars[key] = .string(s) }
        }
        return try chatTemplate.render(vars)
    }

    /// Generate a continuation of the raw text `prompt`.
    public func generate(prompt: String, parameters: GenerateParameters = GenerateParameters()) throws -> String {
        var out = ""
        _ = try generate(tokens: try encode(prompt), parameters: parameters) { out += $0; return true }
        return out
    }

    /// Generate from token ids; `onText` receives text as it is produced (return false to stop).
    @discardableResult
    public func generate(tokens: [Int], parameters: GenerateParameters = GenerateParameters(),
                         onText: (String) -> Bool) throws -> [Int] {
        let cache = model.makeCache()
        let (ids, info) = try generateLoop(model: model, tokenizer: tokenizer, eos: eosTokenIds, tokens: tokens,
                                           history: [], cache: cache, parameters: parameters, onText: onText)
        lastInfo = info
        return ids
    }

    /// The continuation of `prompt` as it is produced. Cancelling the consuming task stops generation.
    public nonisolated func stream(prompt: String, parameters: GenerateParameters = GenerateParameters())
        -> AsyncThrowingStream<String, Error>
    {
        pieceStream { emit in
            try await self.generate(tokens: try self.encode(prompt), parameters: parameters, onText: emit)
        }
    }
}
