/// String searching by Unicode scalars, as Python and Rust compare strings. Swift's String and
/// Foundation compare by grapheme cluster and canonical equivalence ("e\u{301}" has no prefix "e",
/// "\r\n" contains no "\n"), which tokenizers and templates must not do.
extension String {
    /// Non-overlapping occurrences of `needle`, left to right.
    func scalarRanges(of needle: String) -> [Range<String.Index>] {
        let n = Array(needle.unicodeScalars)
        guard let first = n.first else { return [] }
        let u = unicodeScalars
        var out: [Range<String.Index>] = []
        var i = u.startIndex
        while i < u.endIndex {
            if u[i] == first, u[i...].starts(with: n) {
                let end = u.index(i, offsetBy: n.count)
                out.append(i..<end)
                i = end
            } else {
                i = u.index(after: i)
            }
        }
        return out
    }

    func scalarHasPrefix(_ p: String) -> Bool { unicodeScalars.starts(with: p.unicodeScalars) }

    func scalarHasSuffix(_ p: String) -> Bool { unicodeScalars.reversed().starts(with: p.unicodeScalars.reversed()) }

    func scalarContains(_ p: String) -> Bool { p.isEmpty || !scalarRanges(of: p).isEmpty }

    /// Pieces between occurrences of `separator` (Python's str.split(sep)).
    func scalarSplit(_ separator: String) -> [String] {
        var parts: [String] = []
        var start = startIndex
        for r in scalarRanges(of: separator) {
            parts.append(String(unicodeScalars[start..<r.lowerBound]))
            start = r.upperBound
        }
        parts.append(String(unicodeScalars[start...]))
        return parts
    }

    func scalarReplacing(_ target: String, with replacement: String) -> String {
        guard !target.isEmpty else { return self }
        return scalarSplit(target).joined(separator: replacement)
    }
}
