import Foundation

/// A `{"String": ...}` or `{"Regex": ...}` pattern from tokenizer.json.
///
/// Regexes are written for Oniguruma (the Rust `tokenizers` library); ICU (NSRegularExpression) reads
/// the same syntax, except that its `\s` omits U+000B and U+0085, so `\s`/`\S` become `\p{White_Space}`.
struct Pattern: @unchecked Sendable {  // NSRegularExpression is immutable and thread-safe
    enum Kind { case literal(String), regex(NSRegularExpression) }
    let kind: Kind

    init(json: JSONNode?) throws {
        guard let obj = json, obj.pairs != nil else { throw MLXEdgeError.tokenizer("pattern is not an object") }
        if let s = obj["String"]?.string {
            kind = .literal(s)
        } else if let r = obj["Regex"]?.string {
            do {
                kind = .regex(try NSRegularExpression(pattern: Pattern.icu(r)))
            } catch {
                throw MLXEdgeError.tokenizer("cannot compile the pre-tokenizer regex \(r)")
            }
        } else {
            throw MLXEdgeError.tokenizer("pattern needs String or Regex")
        }
    }

    /// Rewrite Oniguruma-only escapes for ICU.
    static func icu(_ pattern: String) -> String {
        var out = ""
        var it = pattern.makeIterator()
        while let c = it.next() {
            guard c == "\\", let n = it.next() else { out.append(c); continue }
            switch n {
            case "s": out += "\\p{White_Space}"
            case "S": out += "\\P{White_Space}"
            default: out.append(c); out.append(n)
            }
        }
        return out
    }

    /// Non-overlapping matches, left to right, as ranges of `s`. Indices come from the UTF-16 and
    /// scalar views, never rounded to Characters: a match may end inside "\r\n" or before a
    /// combining mark.
    func matches(in s: String) -> [Range<String.Index>] {
        switch kind {
        case .literal(let lit):
            return s.scalarRanges(of: lit)
        case .regex(let re):
            let utf16 = s.utf16
            return re.matches(in: s, range: NSRange(location: 0, length: utf16.count)).compactMap { m in
                guard m.range.length > 0 else { return nil }
                let lo = utf16.index(utf16.startIndex, offsetBy: m.range.location)
                return lo..<utf16.index(lo, offsetBy: m.range.length)
            }
        }
    }

    func replacingAll(in s: String, with content: String) -> String {
        switch kind {
        case .literal(let lit):
            return s.scalarReplacing(lit, with: content)
        case .regex(let re):
            let ns = NSRange(s.startIndex..<s.endIndex, in: s)
            return re.stringByReplacingMatches(in: s, range: ns, withTemplate: NSRegularExpression.escapedTemplate(for: content))
        }
    }
}

/// How `Split` keeps the delimiters it finds (tokenizers' `SplitDelimiterBehavior`).
enum SplitBehavior: String, Sendable {
    case removed = "Removed", isolated = "Isolated", mergedWithPrevious = "MergedWithPrevious"
    case mergedWithNext = "MergedWithNext", contiguous = "Contiguous"
}

/// Split `s` at `matches` (the delimiters), keeping them as `behavior` says; empty pieces are dropped.
func split(_ s: String, at matches: [Range<String.Index>], behavior: SplitBehavior, invert: Bool = false) -> [String] {
    // (piece, isDelimiter) in order, covering all of s. Slices go through the scalar view: a
    // match may end inside a grapheme cluster (a letter before its combining mark).
    let u = s.unicodeScalars
    var parts: [(String, Bool)] = []
    var pos = s.startIndex
    for m in matches {
        if pos < m.lowerBound { parts.append((String(u[pos..<m.lowerBound]), invert)) }
        parts.append((String(u[m]), !invert))
        pos = m.upperBound
    }
    if pos < s.endIndex { parts.append((String(u[pos..<s.endIndex]), invert)) }

    var out: [String] = []
    switch behavior {
    case .removed:
        out = parts.filter { !$0.1 }.map { $0.0 }
    case .isolated:
        out = parts.map { $0.0 }
    case .contiguous:
        var lastWasDelimiter = false
        for (p, isDelim) in parts {
            if isDelim == lastWasDelimiter, !out.isEmpty { out[out.count - 1] += p } else { out.append(p) }
            lastWasDelimiter = isDelim
        }
    case .mergedWithPrevious:
        var lastWasDelimiter = false
        for (p, isDelim) in parts {
            if isDelim && !lastWasDelimiter, !out.isEmpty { out[out.count - 1] += p } else { out.append(p) }
            lastWasDelimiter = isDelim
        }
    case .mergedWithNext:
        // Walk from the right: a delimiter joins the piece after it unless that piece is a delimiter.
        var previousWasDelimiter = false
        for (p, isDelim) in parts.reversed() {
            if isDelim && !previousWasDelimiter, !out.isEmpty { out[out.count - 1] = p + out[out.count - 1] } else { out.append(p) }
            previousWasDelimiter = isDelim
        }
        out.reverse()
    }
    return out.filter { !$0.isEmpty }
}
