import Foundation

/// The BPE model of tokenizer.json: vocab, ranked merges, byte fallback, unk handling.
/// Port of the merge loop in tokenizers' `models/bpe/word.rs` (lowest rank first, leftmost on ties).
final class BPEModel: @unchecked Sendable {  // immutable after init; the cache has its own lock
    let vocab: [TokenKey: Int]
    private let scalarIds: [UInt32: Int]  // single-character tokens, the start of every word
    private let merges: [UInt64: (rank: Int32, id: Int32)]
    private let unkId: Int?
    private let fuseUnk: Bool
    private let byteFallback: Bool
    private let ignoreMerges: Bool
    private let byteIds: [Int?]  // `<0xXX>` ids when byte_fallback is on
    private let cache = Cache()

    init(json obj: JSONNode) throws {
        guard let vocab = obj["vocab"]?.pairs else { throw MLXEdgeError.tokenizer("BPE model without vocab") }
        var v: [TokenKey: Int] = [:]
        var scalars: [UInt32: Int] = [:]
        v.reserveCapacity(vocab.underestimatedCount)
        for (k, id) in vocab {
            guard let i = id.int else { throw MLXEdgeError.tokenizer("vocab id of \(k) is not an integer") }
            v[TokenKey(k)] = i
            if k.unicodeScalars.count == 1 { scalars[k.unicodeScalars.first!.value] = i }
        }
        self.vocab = v
        self.scalarIds = scalars
        if let p = obj["continuing_subword_prefix"]?.string, !p.isEmpty {
            throw MLXEdgeError.unsupported("BPE continuing_subword_prefix")
        }
        if let p = obj["end_of_word_suffix"]?.string, !p.isEmpty {
            throw MLXEdgeError.unsupported("BPE end_of_word_suffix")
        }
        var m: [UInt64: (Int32, Int32)] = [:]
        let list = obj["merges"]?.array ?? []
        m.reserveCapacity(list.count)
        for (rank, entry) in list.enumerated() {
            let pair: [String]
            if let s = entry.string {
                // "a b": split at the first space (tokens never contain a plain space in this form).
                guard let sp = s.firstIndex(of: " ") else { throw MLXEdgeError.tokenizer("bad merge \(s)") }
                pair = [String(s[..<sp]), String(s[s.index(after: sp)...])]
            } else if let a = entry.array?.compactMap(\.string), a.count == 2 {
                pair = a
            } else { throw MLXEdgeError.tokenizer("bad merge entry \(entry)") }
            guard let a = v[TokenKey(pair[0])], let b = v[TokenKey(pair[1])], let merged = v[TokenKey(pair[0] + pair[1])] else {
                throw MLXEdgeError.tokenizer("merge \(pair) uses tokens missing from the vocab")
            }
            let key = UInt64(a) << 32 | UInt64(b)
            if m[key] == nil { m[key] = (Int32(rank), Int32(merged)) }
        }
        self.merges = m
        if let u = obj["unk_token"]?.string { unkId = v[TokenKey(u)] } else { unkId = nil }
        fuseUnk = obj["fuse_unk"]?.bool ?? false
        byteFallback = obj["byte_fallback"]?.bool ?? false
        ignoreMerges = obj["ignore_merges"]?.bool ?? false
        byteIds = (0..<256).map { v[TokenKey(String(format: "<0x%02X>", $0))] }
    }

    /// Ids of one pre-tokenized piece.
    func encode(_ word: String) throws -> [Int] {
        if ignoreMerges, let id = vocab[TokenKey(word)] { return [id] }
        if let hit = cache.get(TokenKey(word)) { return hit }
        var symbols: [Int] = []
        var lastWasUnk = false
        for c in word.unicodeScalars {
            if let id = scalarIds[c.value] {
                symbols.append(id); lastWasUnk = false
                continue
            }
            if byteFallback {
                let ids = String(c).utf8.map { byteIds[Int($0)] }
                if ids.allSatisfy({ $0 != nil }) {
                    symbols += ids.map { $0! }; lastWasUnk = false
                    continue
                }
            }
            guard let unk = unkId else {
                throw MLXEdgeError.tokenizer("character U+\(String(c.value, radix: 16, uppercase: true)) is not in the vocabulary and there is no unk token")
            }
            if !(fuseUnk && lastWasUnk) { symbols.append(unk) }
            lastWasUnk = true
        }
        let out = merge(symbols)
        cache.set(TokenKey(word), out)
        return out
    }

    /// Apply merges until none applies: always the lowest rank, the leftmost among equal ranks.
    private func merge(_ input: [Int]) -> [Int] {
        var s = input
        while s.count > 1 {
            var best: (rank: Int32, pos: Int, id: Int32)? = nil
            for i in 0..<(s.count - 1) {
                if let m = merges[UInt64(s[i]) << 32 | UInt64(s[i + 1])], best == nil || m.rank < best!.rank {
                    best = (m.rank, i, m.id)
                }
            }
            guard let b = best else { break }
            // Merge every non-overlapping occurrence of this pair left to right (same rank, so
            // the heap in tokenizers pops them in position order).
            var out: [Int] = []
            out.reserveCapacity(s.count)
            var i = 0
            let (a, c) = (s[b.pos], s[b.pos + 1])
            while i < s.count {
                if i < s.count - 1, i >= b.pos, s[i] == a, s[i + 1] == c {
                    out.append(Int(b.id)); i += 2
                } else {
                    out.append(s[i]); i += 1
                }
            }
            s = out
        }
        return s
    }

    /// A small thread-safe memo of piece -> ids (pieces repeat a lot in text).
    final class Cache: @unchecked Sendable {
        private var map: [TokenKey: [Int]] = [:]
        private let lock = NSLock()
        func get(_ k: TokenKey) -> [Int]? { lock.lock(); defer { lock.unlock() }; return map[k] }
        func set(_ k: TokenKey, _ v: [Int]) {
            lock.lock(); defer { lock.unlock() }
            if map.count > 50_000 { map.removeAll(keepingCapacity: true) }
            map[k] = v
        }
    }
}
