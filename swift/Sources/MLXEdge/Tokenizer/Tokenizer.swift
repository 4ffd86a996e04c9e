import Foundation

/// A tokenizer read from tokenizer.json, encoding exactly like Hugging Face `tokenizers` for the
/// BPE tokenizers LLMs use: byte-level (GPT-2, Llama 3, Qwen, SmolLM2) and SentencePiece-style
/// with byte fallback (Llama 2, Gemma).
///
/// The pipeline is tokenizers': added tokens are cut out first, each remaining segment is
/// normalized, pre-tokenized into pieces, BPE-encoded, then the post-processor adds BOS.
public final class Tokenizer: Sendable {
    private let model: BPEModel
    private let normalizer: Normalizer?
    private let preTokenizer: PreTokenizer?
    private let decoder: TokenDecoder?
    private let rawMatcher: AddedTokenMatcher      // added tokens matched on raw text
    private let normalizedMatcher: AddedTokenMatcher  // those with normalized: true
    private let idToToken: [String?]
    private let specialIds: Set<Int>
    private let prefixIds: [Int]  // TemplateProcessing "single" before / after $A
    private let suffixIds: [Int]

    public let bosToken: String?
    public let eosToken: String?

    /// Read `tokenizer.json`; `config` is tokenizer_config.json (BOS/EOS names), if any.
    public init(tokenizerJSON url: URL, config: JSONValue? = nil) throws {
        guard let data = FileManager.default.contents(atPath: url.path) else { throw MLXEdgeError.missingFile(url.path) }
        let root: JSONNode
        do { root = try JSONNode.parse(Array(data)) } catch {
            throw MLXEdgeError.corruptFile(url.lastPathComponent, reason: "\(error)")
        }
        guard let modelObj = root["model"], modelObj.pairs != nil else {
            throw MLXEdgeError.corruptFile(url.lastPathComponent, reason: "no model")
        }
        let type = modelObj["type"]?.string ?? "BPE"
        guard type == "BPE" else { throw MLXEdgeError.unsupported("tokenizer model \(type) (only BPE)") }
        model = try BPEModel(json: modelObj)
        normalizer = try Normalizer(json: root["normalizer"])
        preTokenizer = try PreTokenizer(json: root["pre_tokenizer"])
        decoder = try TokenDecoder(json: root["decoder"])

        let added = try (root["added_tokens"]?.array ?? []).map(AddedToken.init(json:))
        rawMatcher = AddedTokenMatcher(added.filter { !$0.normalized })
        normalizedMatcher = AddedTokenMatcher(added.filter { $0.normalized })
        specialIds = Set(added.filter(\.special).map(\.id))

        var table = [String?](repeating: nil, count: max((model.vocab.values.max() ?? -1), (added.map(\.id).max() ?? -1)) + 1)
        for (t, i) in model.vocab { table[i] = t.string }
        for t in added { table[t.id] = t.content }
        idToToken = table

        (prefixIds, suffixIds) = try Self.template(root["post_processor"])

        func name(_ key: String) -> String? { config?[key]?.string ?? config?[key]?["content"]?.string }
        bosToken = name("bos_token")
        eosToken = name("eos_token")
    }

    /// Token ids of `text`. Special tokens written in the text are recognized, like `tokenizers`.
    public func encode(_ text: String, addSpecialTokens: Bool = true) throws -> [Int] {
        var ids: [Int] = []
        for (i, seg) in rawMatcher.split(text).enumerated() {
            switch seg {
            case .token(let id): ids.append(id)
            case .text(let raw):
                let norm = normalizer.map { $0(raw) } ?? raw
                for sub in normalizedMatcher.split(norm) {
                    switch sub {
                    case .token(let id): ids.append(id)
                    case .text(let s):
                        let pieces = preTokenizer.map { $0([s], first: i == 0) } ?? [s]
                        for p in pieces { ids += try model.encode(p) }
                    }
                }
            }
        }
        return addSpecialTokens ? prefixIds + ids + suffixIds : ids
    }

    /// Text of `ids` through the tokenizer's decoder chain (invalid UTF-8 becomes U+FFFD).
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String {
        let tokens = ids.compactMap { id -> String? in
            guard id >= 0, id < idToToken.count else { return nil }
            if skipSpecialTokens && specialIds.contains(id) { return nil }
            return idToToken[id]
        }
        guard let decoder else { return tokens.joined(separator: " ") }
        return decoder(tokens).joined()
    }

    public func tokenToId(_ token: String) -> Int? {
        model.vocab[TokenKey(token)] ?? idToToken.firstIndex(where: { $0.map(TokenKey.init) == TokenKey(token) })
    }

    public func idToTokenString(_ id: Int) -> String? { id >= 0 && id < idToToken.count ? idToToken[id] : nil }

    public var vocabularySize: Int { idToToken.count }

    public func isSpecial(_ id: Int) -> Bool { specialIds.contains(id) }

    public var bosTokenId: Int? { bosToken.flatMap(tokenToId) }
    public var eosTokenId: Int? { eosToken.flatMap(tokenToId) }

    /// TemplateProcessing's "single" sequence as (ids before $A, ids after $A); other processors add nothing.
    private static func template(_ json: JSONNode?) throws -> ([Int], [Int]) {
        guard let obj = json, let type = obj["type"]?.string else { return ([], []) }
        switch type {
        case "Sequence":
            var pre: [Int] = [], post: [Int] = []
            for p in obj["processors"]?.array ?? [] {
                let (a, b) = try template(p)
                pre += a; post = b + post
            }
            return (pre, post)
        case "TemplateProcessing":
            let specials = obj["special_tokens"]
            var pre: [Int] = [], post: [Int] = []
            var seenA = false
            for item in obj["single"]?.array ?? [] {
                if item["Sequence"] != nil { seenA = true; continue }
                guard let name = item["SpecialToken"]?["id"]?.string,
                      let ids = specials?[name]?["ids"]?.array?.compactMap(\.int) else {
                    throw MLXEdgeError.tokenizer("TemplateProcessing item \(item) is not understood")
                }
                if seenA { post += ids } else { pre += ids }
            }
            return (pre, post)
        case "ByteLevel": return ([], [])
        case "RobertaProcessing", "BertProcessing":
            throw MLXEdgeError.unsupported("tokenizer post-processor \(type)")
        default:
            throw MLXEdgeError.unsupported("tokenizer post-processor \(type)")
        }
    }
}
