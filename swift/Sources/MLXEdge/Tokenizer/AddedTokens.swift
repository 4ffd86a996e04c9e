import Foundation

/// One entry of tokenizer.json's `added_tokens`.
struct AddedToken: Sendable {
    let id: Int
    let content: String
    let special: Bool
    let normalized: Bool
    let lstrip: Bool
    let rstrip: Bool
    let singleWord: Bool

    init(json obj: JSONNode) throws {
        guard let id = obj["id"]?.int, let content = obj["content"]?.string else {
            throw MLXEdgeError.tokenizer("added token without id or content")
        }
        self.id = id
        self.content = content
        special = obj["special"]?.bool ?? false
        normalized = obj["normalized"]?.bool ?? !special
        lstrip = obj["lstrip"]?.bool ?? false
        rstrip = obj["rstrip"]?.bool ?? false
        singleWord = obj["single_word"]?.bool ?? false
    }
}

/// Finds added tokens in text: leftmost match, longest among those starting there (the
/// aho-corasick LeftmostLongest of tokenizers' AddedVocabulary), over Unicode scalars.
struct AddedTokenMatcher: Sendable {
    private final class Node: @unchecked Sendable {
        var next: [UInt32: Node] = [:]
        var token: AddedToken?
    }
    private let root = Node()
    let isEmpty: Bool

    init(_ tokens: [AddedToken]) {
        for t in tokens where !t.content.isEmpty {
            var n = root
            for c in t.content.unicodeScalars {
                if let m = n.next[c.value] { n = m } else { let m = Node(); n.next[c.value] = m; n = m }
            }
            n.token = t
        }
        isEmpty = tokens.isEmpty
    }

    enum Segment { case text(String), token(Int) }

    /// Cut `s` into plain text and added tokens (with their lstrip/rstrip/single_word rules).
    func split(_ s: String) -> [Segment] {
        let u = Array(s.unicodeScalars)
        guard !isEmpty else { return [.text(s)] }
        var out: [Segment] = []
        var textStart = 0
        var i = 0
        while i < u.count {
            var n = root
            var best: (AddedToken, Int)? = nil
            var j = i
            while j < u.count, let m = n.next[u[j].value] {
                n = m; j += 1
                if let t = n.token { best = (t, j) }
            }
            guard let (token, endRaw) = best, Self.wordBoundaryOK(token, u, i, endRaw) else { i += 1; continue }
            var start = i, end = endRaw
            if token.lstrip { while start > textStart, u[start - 1].properties.isWhitespace { start -= 1 } }
            if token.rstrip { while end < u.count, u[end].properties.isWhitespace { end += 1 } }
            if start > textStart { out.append(.text(String(String.UnicodeScalarView(u[textStart..<start])))) }
            out.append(.token(token.id))
            i = end
            textStart = end
        }
        if textStart < u.count { out.append(.text(String(String.UnicodeScalarView(u[textStart...])))) }
        return out
    }

    private static func wordBoundaryOK(_ t: AddedToken, _ u: [Unicode.Scalar], _ start: Int, _ end: Int) -> Bool {
        guard t.singleWord else { return true }
        func isWord(_ c: Unicode.Scalar) -> Bool { c.properties.isAlphabetic || c.properties.numericType != nil || c == "_" }
        if start > 0, isWord(u[start - 1]) { return false }
        if end < u.count, isWord(u[end]) { return false }
        return true
    }
}
