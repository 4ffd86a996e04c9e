import Foundation

extension Value {
    /// Parse JSON keeping the order of object keys (tools and messages are shown in that order,
    /// e.g. by `tojson`). Integers stay integers, other numbers become doubles.
    public static func parseJSON(_ text: String) throws -> Value {
        var p = JSONScanner(Array(text.utf8))
        let v = try p.value()
        p.skipSpace()
        guard p.i == p.b.count else { throw MLXEdgeError.invalidArgument("trailing characters after JSON value") }
        return v
    }
}

private struct JSONScanner {
    let b: [UInt8]
    var i = 0
    init(_ b: [UInt8]) { self.b = b }

    mutating func skipSpace() { while i < b.count, [0x20, 0x09, 0x0A, 0x0D].contains(b[i]) { i += 1 } }

    func fail(_ what: String) -> MLXEdgeError { .invalidArgument("invalid JSON at byte \(i): \(what)") }

    mutating func value() throws -> Value {
        skipSpace()
        guard i < b.count else { throw fail("unexpected end") }
        switch b[i] {
        case UInt8(ascii: "{"):
            i += 1
            var o = OrderedObject()
            skipSpace()
            if i < b.count, b[i] == UInt8(ascii: "}") { i += 1; return .object(o) }
            while true {
                skipSpace()
                guard case .string(let k) = try value() else { throw fail("object key must be a string") }
                skipSpace()
                guard i < b.count, b[i] == UInt8(ascii: ":") else { throw fail("expected :") }
                i += 1
                o[k] = try value()
                skipSpace()
                guard i < b.count else { throw fail("unterminated object") }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "}") { i += 1; return .object(o) }
                throw fail("expected , or }")
            }
        case UInt8(ascii: "["):
            i += 1
            var a: [Value] = []
            skipSpace()
            if i < b.count, b[i] == UInt8(ascii: "]") { i += 1; return .array(a) }
            while true {
                a.append(try value())
                skipSpace()
                guard i < b.count else { throw fail("unterminated array") }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "]") { i += 1; return .array(a) }
                throw fail("expected , or ]")
            }
        case UInt8(ascii: "\""):
            return .string(try string())
        case UInt8(ascii: "t"): return try literal("true", .bool(true))
        case UInt8(ascii: "f"): return try literal("false", .bool(false))
        case UInt8(ascii: "n"): return try literal("null", .none)
        default:
            let start = i
            while i < b.count, "+-0123456789.eE".utf8.contains(b[i]) { i += 1 }
            let s = String(decoding: b[start..<i], as: UTF8.self)
            if let n = Int(s) { return .int(n) }
            if let d = Double(s) { return .double(d) }
            throw fail("bad number \(s)")
        }
    }

    mutating func literal(_ word: String, _ v: Value) throws -> Value {
        let w = Array(word.utf8)
        guard i + w.count <= b.count, Array(b[i..<(i + w.count)]) == w else { throw fail("bad literal") }
        i += w.count
        return v
    }

    mutating func string() throws -> String {
        i += 1
        var out = [UInt8]()
        while i < b.count, b[i] != UInt8(ascii: "\"") {
            if b[i] != UInt8(ascii: "\\") { out.append(b[i]); i += 1; continue }
            i += 1
            guard i < b.count else { break }
            let c = b[i]
            i += 1
            switch c {
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "u"):
                var code = try hex4()
                if (0xD800..<0xDC00).contains(code), i + 1 < b.count, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") {
                    i += 2
                    let low = try hex4()
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
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
        guard i + 4 <= b.count, let v = UInt32(String(decoding: b[i..<(i + 4)], as: UTF8.self), radix: 16) else { throw fail("bad \\u escape") }
        i += 4
        return v
    }
}
