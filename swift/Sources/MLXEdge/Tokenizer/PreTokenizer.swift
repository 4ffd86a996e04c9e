import Foundation

/// tokenizers' pre-tokenizers: cut normalized text into pieces that BPE encodes independently.
indirect enum PreTokenizer: Sendable {
    case sequence([PreTokenizer])
    /// Optionally splits with the GPT-2 regex, then spells bytes with the byte-level alphabet.
    case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
    case split(Pattern, SplitBehavior, invert: Bool)
    case digits(individual: Bool)
    case metaspace(replacement: String, prependScheme: String, split: Bool)
    case whitespaceSplit

    init?(json: JSONNode?) throws {
        guard let obj = json, let type = obj["type"]?.string else { return nil }
        switch type {
        case "Sequence":
            self = .sequence(try (obj["pretokenizers"]?.array ?? []).compactMap { try PreTokenizer(json: $0) })
        case "ByteLevel":
            self = .byteLevel(addPrefixSpace: obj["add_prefix_space"]?.bool ?? true, useRegex: obj["use_regex"]?.bool ?? true)
        case "Split":
            let name = obj["behavior"]?.string ?? "Isolated"
            guard let behavior = SplitBehavior(rawValue: name) else { throw MLXEdgeError.unsupported("Split behavior \(name)") }
            self = .split(try Pattern(json: obj["pattern"]), behavior, invert: obj["invert"]?.bool ?? false)
        case "Digits": self = .digits(individual: obj["individual_digits"]?.bool ?? false)
        case "Metaspace":
            let scheme = obj["prepend_scheme"]?.string ?? ((obj["add_prefix_space"]?.bool ?? true) ? "always" : "never")
            self = .metaspace(replacement: obj["replacement"]?.string ?? "\u{2581}", prependScheme: scheme, split: obj["split"]?.bool ?? true)
        case "WhitespaceSplit": self = .whitespaceSplit
        default: throw MLXEdgeError.unsupported("tokenizer pre-tokenizer \(type)")
        }
    }

    /// Apply to every piece; `first` is true for the text before any added token (Metaspace "first").
    func callAsFunction(_ pieces: [String], first: Bool) -> [String] {
        switch self {
        case .sequence(let list):
            return list.reduce(pieces) { $1($0, first: first) }
        case .byteLevel(let addPrefixSpace, let useRegex):
            return pieces.flatMap { p -> [String] in
                let s = addPrefixSpace && !p.scalarHasPrefix(" ") ? " " + p : p
                let parts = useRegex ? MLXEdge.split(s, at: Self.gpt2.matches(in: s), behavior: .isolated) : [s]
                return parts.map(ByteLevel.encode)
            }
        case .split(let pattern, let behavior, let invert):
            return pieces.flatMap { MLXEdge.split($0, at: pattern.matches(in: $0), behavior: behavior, invert: invert) }
        case .digits(let individual):
            return pieces.flatMap { p -> [String] in
                let ranges = Self.digitRuns(p, individual: individual)
                return MLXEdge.split(p, at: ranges, behavior: individual ? .isolated : .contiguous)
            }
        case .metaspace(let replacement, let scheme, let doSplit):
            return pieces.enumerated().flatMap { (i, p) -> [String] in
                var s = p.scalarReplacing(" ", with: replacement)
                let prepend = scheme == "always" || (scheme == "first" && first && i == 0)
                if prepend && !s.scalarHasPrefix(replacement) { s = replacement + s }
                guard doSplit else { return [s] }
                let ranges = Pattern(literal: replacement).matches(in: s)
                return MLXEdge.split(s, at: ranges, behavior: .mergedWithNext)
            }
        case .whitespaceSplit:
            return pieces.flatMap { $0.split(whereSeparator: { $0.isWhitespace }).map(String.init) }
        }
    }

    private static let gpt2 = try! Pattern(json: .object(keys: ["Regex"], values: [.string(gpt2Pattern)]))

    /// Ranges of digits (Unicode general category N*, like Rust's `char::is_numeric`).
    private static func digitRuns(_ s: String, individual: Bool) -> [Range<String.Index>] {
        var out: [Range<String.Index>] = []
        let u = s.unicodeScalars
        var i = u.startIndex
        while i < u.endIndex {
            let next = u.index(after: i)
            if isNumeric(u[i]) { out.append(i..<next) }
            i = next
        }
        return out
    }

    private static func isNumeric(_ c: Unicode.Scalar) -> Bool {
        switch c.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }
}

extension Pattern {
    init(literal: String) { self.kind = .literal(literal) }
}
