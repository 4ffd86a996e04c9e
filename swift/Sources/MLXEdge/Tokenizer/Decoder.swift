import Foundation

/// tokenizers' decoders: each maps a list of token strings to a list of strings, joined at the end.
indirect enum TokenDecoder: Sendable {
    case sequence([TokenDecoder])
    case byteLevel
    case replace(Pattern, String)
    case byteFallback
    case fuse
    case strip(content: Character, start: Int, stop: Int)
    case metaspace(replacement: String, prependScheme: String)

    init?(json: JSONNode?) throws {
        guard let obj = json, let type = obj["type"]?.string else { return nil }
        switch type {
        case "Sequence": self = .sequence(try (obj["decoders"]?.array ?? []).compactMap { try TokenDecoder(json: $0) })
        case "ByteLevel": self = .byteLevel
        case "Replace": self = .replace(try Pattern(json: obj["pattern"]), obj["content"]?.string ?? "")
        case "ByteFallback": self = .byteFallback
        case "Fuse": self = .fuse
        case "Strip":
            self = .strip(content: (obj["content"]?.string ?? " ").first ?? " ",
                          start: obj["start"]?.int ?? 0, stop: obj["stop"]?.int ?? 0)
        case "Metaspace":
            let scheme = obj["prepend_scheme"]?.string ?? ((obj["add_prefix_space"]?.bool ?? true) ? "always" : "never")
            self = .metaspace(replacement: obj["replacement"]?.string ?? "\u{2581}", prependScheme: scheme)
        default: throw MLXEdgeError.unsupported("tokenizer decoder \(type)")
        }
    }

    func callAsFunction(_ tokens: [String]) -> [String] {
        switch self {
        case .sequence(let list):
            return list.reduce(tokens) { $1($0) }
        case .byteLevel:
            // A token with a character outside the byte alphabet (an added token) keeps its UTF-8.
            var bytes: [UInt8] = []
            for t in tokens {
                let mapped = t.unicodeScalars.map { ByteLevel.scalarToByte[$0.value] }
                if mapped.allSatisfy({ $0 != nil }) { bytes += mapped.map { $0! } } else { bytes += Array(t.utf8) }
            }
            return [String(decoding: bytes, as: UTF8.self)]
        case .replace(let pattern, let content):
            return tokens.map { pattern.replacingAll(in: $0, with: content) }
        case .byteFallback:
            var out: [String] = []
            var pending: [UInt8] = []
            func flush() {
                guard !pending.isEmpty else { return }
                if let s = String(bytes: pending, encoding: .utf8) {
                    out.append(s)
                } else {
                    out += Array(repeating: "\u{FFFD}", count: pending.count)
                }
                pending.removeAll()
            }
            for t in tokens {
                if let b = byteToken(t) { pending.append(b) } else { flush(); out.append(t) }
            }
            flush()
            return out
        case .fuse:
            return [tokens.joined()]
        case .strip(let content, let start, let stop):
            return tokens.map { t in
                var chars = Array(t)
                var cut = 0
                while cut < start, cut < chars.count, chars[cut] == content { cut += 1 }
                chars.removeFirst(cut)
                var end = 0
                while end < stop, !chars.isEmpty, chars.last == content { chars.removeLast(); end += 1 }
                return String(chars)
            }
        case .metaspace(let replacement, let scheme):
            // As tokenizers does: in the first token every replacement character is dropped.
            return tokens.enumerated().map { i, t in
                t.scalarReplacing(replacement, with: i == 0 && scheme != "never" ? "" : " ")
            }
        }
    }
}

/// `<0xAB>` -> 0xAB.
func byteToken(_ t: String) -> UInt8? {
    let u = Array(t.utf8)
    guard u.count == 6, u[0] == 60, u[1] == 48, u[2] == 120, u[5] == 62 else { return nil }
    return UInt8(String(decoding: u[3...4], as: UTF8.self), radix: 16)
}
