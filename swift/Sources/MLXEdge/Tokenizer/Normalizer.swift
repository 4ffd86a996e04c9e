import Foundation

/// tokenizers' normalizers that LLM tokenizers use (Llama 2 / Gemma: Prepend + Replace).
indirect enum Normalizer: Sendable {
    case sequence([Normalizer])
    case prepend(String)
    case replace(Pattern, String)
    case nfc, nfd, nfkc, nfkd, lowercase
    case strip(left: Bool, right: Bool)

    init?(json: JSONNode?) throws {
        guard let obj = json, let type = obj["type"]?.string else { return nil }
        switch type {
        case "Sequence":
            self = .sequence(try (obj["normalizers"]?.array ?? []).compactMap { try Normalizer(json: $0) })
        case "Prepend": self = .prepend(obj["prepend"]?.string ?? "")
        case "Replace": self = .replace(try Pattern(json: obj["pattern"]), obj["content"]?.string ?? "")
        case "NFC": self = .nfc
        case "NFD": self = .nfd
        case "NFKC": self = .nfkc
        case "NFKD": self = .nfkd
        case "Lowercase": self = .lowercase
        case "Strip": self = .strip(left: obj["strip_left"]?.bool ?? true, right: obj["strip_right"]?.bool ?? true)
        default: throw MLXEdgeError.unsupported("tokenizer normalizer \(type)")
        }
    }

    func callAsFunction(_ s: String) -> String {
        switch self {
        case .sequence(let list): return list.reduce(s) { $1($0) }
        case .prepend(let p): return s.isEmpty ? s : p + s  // tokenizers leaves empty input alone
        case .replace(let pattern, let content): return pattern.replacingAll(in: s, with: content)
        case .nfc: return s.precomposedStringWithCanonicalMapping
        case .nfd: return s.decomposedStringWithCanonicalMapping
        case .nfkc: return s.precomposedStringWithCompatibilityMapping
        case .nfkd: return s.decomposedStringWithCompatibilityMapping
        case .lowercase: return s.lowercased()
        case .strip(let left, let right):
            var scalars = Substring(s).unicodeScalars
            while left, let f = scalars.first, f.properties.isWhitespace { scalars.removeFirst() }
            while right, let l = scalars.last, l.properties.isWhitespace { scalars.removeLast() }
            return String(scalars)
        }
    }
}
