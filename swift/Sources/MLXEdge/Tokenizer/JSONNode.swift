import Foundation

/// tokenizer.json as a tree whose object keys are kept exactly, in order. Foundation's
/// JSONSerialization returns dictionaries keyed by `String`, whose equality is canonical
/// equivalence: a vocabulary with both "\u{e9}" and "e\u{301}" (Gemma has such pairs) would lose one.
enum JSONNode {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONNode])
    case object(keys: [String], values: [JSONNode])  // two arrays: a tuple array trips the compiler

    /// The first value under `key` of an object (a linear search: objects here are small, except
    /// the vocabulary, which is iterated through `pairs`).
    subscript(key: String) -> JSONNode? {
        guard case .object(let keys, let values) = self,
              let i = keys.firstIndex(where: { $0.utf8.elementsEqual(key.utf8) }) else { return nil }
        return values[i]
    }
    var string: String? { if case .string(let s) = self { return s }; return nil }
    var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
    var int: Int? { if case .number(let d) = self, d == d.rounded() { return Int(d) }; return nil }
    var array: [JSONNode]? { if case .array(let a) = self { return a }; return nil }
    var pairs: Zip2Sequence<[String], [JSONNode]>? {
        if case .object(let k, let v) = self { return zip(k, v) }
        return nil
    }
    var isNull: Bool { if case .null = self { return true }; return false }

    static func parse(_ bytes: [UInt8]) throws -> JSONNode {
        try bytes.withUnsafeBufferPointer { buf in
            var p = NodeParser(b: buf)
            let v = try p.value()
            p.skip()
            guard p.i == buf.count else { throw MLXEdgeError.tokenizer("trailing bytes after the JSON value") }
            return v
        }
    }
}

private struct NodeParser {
    let b: UnsafeBufferPointer<UInt8>
    var i = 0

    mutating func skip() { while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 } }

    func fail(_ what: String) -> MLXEdgeError { .tokenizer("invalid JSON at byte \(i): \(what)") }

    mutating func value() throws -> JSONNode {
        skip()
        guard i < b.count else { throw fail("unexpected end") }
        switch b[i] {
        case 0x7B:  // {
            i += 1
            var keys: [String] = [], values: [JSONNode] = []
            skip()
            if i < b.count, b[i] == 0x7D { i += 1; return .object(keys: keys, values: values) }
            while true {
                skip()
                guard i < b.count, b[i] == 0x22 else { throw fail("expected a key") }
                let k = try string()
                skip()
                guard i < b.count, b[i] == 0x3A else { throw fail("expected :") }
                i += 1
                keys.append(k)
                values.append(try value())
                skip()
                guard i < b.count else { throw fail("unterminated object") }
                if b[i] == 0x2C { i += 1; continue }
                if b[i] == 0x7D { i += 1; return .object(keys: keys, values: values) }
                throw fail("expected , or }")
            }
        case 0x5B:  // [
            i += 1
            var items: [JSONNode] = []
            skip()
            if i < b.count, b[i] == 0x5D { i += 1; return .array(items) }
            while true {
                items.append(try value())
                skip()
                guard i < b.count else { throw fail("unterminated array") }
                if b[i] == 0x2C { i += 1; continue }
                if b[i] == 0x5D { i += 1; return .array(items) }
                throw fail("expected , or ]")
            }
        case 0x22: return .string(try string())
        case 0x74: try word("true"); return .bool(true)
        case 0x66: try word("false"); return .bool(false)
        case 0x6E: try word("null"); return .null
        default:
            let start = i
            while i < b.count, (b[i] >= 0x30 && b[i] <= 0x39) || b[i] == 0x2D || b[i] == 0x2B || b[i] == 0x2E || b[i] == 0x65 || b[i] == 0x45 { i += 1 }
            guard let d = Double(String(decoding: UnsafeBufferPointer(rebasing: b[start..<i]), as: UTF8.self)) else { throw fail("bad number") }
            return .number(d)
        }
    }

    mutating func word(_ w: StaticString) throws {
        let n = w.utf8CodeUnitCount
        guard i + n <= b.count, memcmp(b.baseAddress! + i, w.utf8Start, n) == 0 else { throw fail("bad literal") }
        i += n
    }

    mutating func string() throws -> String {
        i += 1
        let start = i
        // Fast path: no escapes.
        while i < b.count, b[i] != 0x22, b[i] != 0x5C { i += 1 }
        guard i < b.count else { throw fail("unterminated string") }
        if b[i] == 0x22 {
            defer { i += 1 }
            return String(decoding: UnsafeBufferPointer(rebasing: b[start..<i]), as: UTF8.self)
        }
        var out = Array(b[start..<i])
        while i < b.count, b[i] != 0x22 {
            if b[i] != 0x5C { out.append(b[i]); i += 1; continue }
            i += 1
            guard i < b.count else { break }
            let c = b[i]
            i += 1
            switch c {
            case 0x6E: out.append(0x0A)
            case 0x74: out.append(0x09)
            case 0x72: out.append(0x0D)
            case 0x62: out.append(0x08)
            case 0x66: out.append(0x0C)
            case 0x75:  // \uXXXX, with surrogate pairs
                var code = try hex4()
                if (0xD800..<0xDC00).contains(code), i + 1 < b.count, b[i] == 0x5C, b[i + 1] == 0x75 {
                    i += 2
                    let low = try hex4()
                    code = 0x10000 + ((code - 0xD800) << 10) + (low &- 0xDC00)
                }
                out += Array(String(Unicode.Scalar(code).map(Character.init) ?? "\u{FFFD}").utf8)
            default: out.append(c)  // \" \\ \/
            }
        }
        guard i < b.count else { throw fail("unterminated string") }
        i += 1
        return String(decoding: out, as: UTF8.self)
    }

    mutating func hex4() throws -> UInt32 {
        guard i + 4 <= b.count,
              let v = UInt32(String(decoding: UnsafeBufferPointer(rebasing: b[i..<(i + 4)]), as: UTF8.self), radix: 16)
        else { throw fail("bad \\u escape") }
        i += 4
        return v
    }
}

/// A token's text as a dictionary key compared byte for byte (see `JSONNode`).
struct TokenKey: Hashable {
    let string: String
    init(_ s: String) { string = s }
    static func == (a: TokenKey, b: TokenKey) -> Bool { a.string.utf8.elementsEqual(b.string.utf8) }
    func hash(into h: inout Hasher) {
        var s = string
        s.withUTF8 { h.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}
