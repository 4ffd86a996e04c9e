import Foundation

/// Jinja's operators, filters and tests, and the Python str/dict methods templates call, with
/// Python's semantics (strings index by code point, `split()` without a separator drops empties...).
enum Builtins {
    static let globals: [String: Value] = [
        "raise_exception": .callable(Callable { args, _ in
            throw MLXEdgeError.template(args.first?.rendered ?? "raise_exception")
        }),
        "namespace": .callable(Callable { args, kwargs in
            var o = OrderedObject()
            if case .object(let initial)? = args.first { for k in initial.keys { o[k] = initial[k] } }
            for (k, v) in kwargs { o[k] = v }
            return .namespace(Namespace(o))
        }),
        "range": .callable(Callable { args, _ in
            let n = try args.map { try int($0) }
            let (start, stop, step) = n.count == 1 ? (0, n[0], 1) : (n[0], n[1], n.count > 2 ? n[2] : 1)
            guard step != 0 else { throw MLXEdgeError.template("range step is 0") }
            return .array(Swift.stride(from: start, to: stop, by: step).map { .int($0) })
        }),
        "strftime_now": .callable(Callable { args, _ in
            .string(strftime(args.first?.rendered ?? "%Y-%m-%d", Date()))
        }),
        "dict": .callable(Callable { _, kwargs in .object(OrderedObject(kwargs)) }),
    ]

    // MARK: attribute and item access

    static func attribute(_ v: Value, _ name: String) throws -> Value {
        switch v {
        case .undefined: throw MLXEdgeError.template("attribute \(name) of an undefined value")
        case .object(let o):
            if let m = method(v, name), ["items", "keys", "values", "get"].contains(name) { return m }
            return o[name] ?? .undefined
        case .namespace(let ns): return ns.attributes[name] ?? .undefined
        default: return method(v, name) ?? .undefined
        }
    }

    static func `subscript`(_ v: Value, _ key: Value) throws -> Value {
        switch (v, key) {
        case (.undefined, _): throw MLXEdgeError.template("subscript of an undefined value")
        case (.array(let a), .int(let i)):
            let j = i < 0 ? a.count + i : i
            return j >= 0 && j < a.count ? a[j] : .undefined
        case (.string(let s), .int(let i)):
            let u = Array(s.unicodeScalars)
            let j = i < 0 ? u.count + i : i
            return j >= 0 && j < u.count ? .string(String(u[j])) : .undefined
        case (.object(let o), .string(let k)): return o[k] ?? method(v, k) ?? .undefined
        case (.namespace(let ns), .string(let k)): return ns.attributes[k] ?? .undefined
        case (_, .string(let k)): return method(v, k) ?? .undefined
        default: return .undefined
        }
    }

    static func slice(_ v: Value, _ a: Value?, _ b: Value?, _ c: Value?) throws -> Value {
        func opt(_ x: Value?) throws -> Int? {
            guard let x, !(x.isUndefined), !(x == .none) else { return nil }
            return try int(x)
        }
        let step = try opt(c) ?? 1
        guard step != 0 else { throw MLXEdgeError.template("slice step is 0") }
        func indices(_ n: Int) throws -> [Int] {
            // Python's slice.indices()
            func clamp(_ i: Int?, _ def: Int) -> Int {
                guard var i else { return def }
                if i < 0 { i += n }
                return step > 0 ? min(max(i, 0), n) : min(max(i, -1), n - 1)
            }
            let start = clamp(try opt(a), step > 0 ? 0 : n - 1)
            let stop = clamp(try opt(b), step > 0 ? n : -1)
            return Array(Swift.stride(from: start, to: stop, by: step))
        }
        switch v {
        case .array(let arr): return .array(try indices(arr.count).map { arr[$0] })
        case .string(let s):
            let u = Array(s.unicodeScalars)
            return .string(String(String.UnicodeScalarView(try indices(u.count).map { u[$0] })))
        default: throw MLXEdgeError.template("cannot slice \(v.repr())")
        }
    }

    /// Bound Python methods of str and dict.
    static func method(_ v: Value, _ name: String) -> Value? {
        switch v {
        case .string(let s):
            let fn: (@Sendable ([Value]) throws -> Value)?
            switch name {
            case "strip": fn = { .string(strip(s, $0.first, left: true, right: true)) }
            case "lstrip": fn = { .string(strip(s, $0.first, left: true, right: false)) }
            case "rstrip": fn = { .string(strip(s, $0.first, left: false, right: true)) }
            case "upper": fn = { _ in .string(s.uppercased()) }
            case "lower": fn = { _ in .string(s.lowercased()) }
            case "title": fn = { _ in .string(s.capitalized) }
            case "capitalize": fn = { _ in .string(capitalize(s)) }
            case "split": fn = { args in .array(split(s, args.first, maxsplit: args.count > 1 ? try int(args[1]) : -1).map { .string($0) }) }
            case "splitlines": fn = { _ in .array(s.split(omittingEmptySubsequences: false, whereSeparator: { $0.isNewline }).map { .string(String($0)) }) }
            case "startswith": fn = { args in .bool(try affixes(args.first).contains { s.scalarHasPrefix($0) }) }
            case "endswith": fn = { args in .bool(try affixes(args.first).contains { s.scalarHasSuffix($0) }) }
            case "replace": fn = { args in
                guard args.count >= 2 else { throw MLXEdgeError.template("replace needs 2 arguments") }
                return .string(s.scalarReplacing(args[0].rendered, with: args[1].rendered))
            }
            case "find": fn = { args in
                guard let r = s.scalarRanges(of: args.first?.rendered ?? "").first else { return .int(-1) }
                return .int(s.unicodeScalars.distance(from: s.startIndex, to: r.lowerBound))
            }
            case "count": fn = { args in .int(s.scalarRanges(of: args.first?.rendered ?? "").count) }
            case "join": fn = { args in
                guard case .array(let a)? = args.first else { throw MLXEdgeError.template("join needs a list") }
                return .string(a.map(\.rendered).joined(separator: s))
            }
            case "isdigit": fn = { _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.numericType == .decimal }) }
            case "isspace": fn = { _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.isWhitespace }) }
            default: fn = nil
            }
            return fn.map { f in .callable(Callable { args, _ in try f(args) }) }
        case .object(let o):
            switch name {
            case "items": return .callable(Callable { _, _ in .array(o.keys.map { .array([.string($0), o[$0]!]) }) })
            case "keys": return .callable(Callable { _, _ in .array(o.keys.map { .string($0) }) })
            case "values": return .callable(Callable { _, _ in .array(o.keys.map { o[$0]! }) })
            case "get": return .callable(Callable { args, _ in
                guard case .string(let k)? = args.first else { return .none }
                return o[k] ?? (args.count > 1 ? args[1] : .none)
            })
            default: return nil
            }
        default: return nil
        }
    }

    // MARK: operators

    static func binary(_ op: String, _ a: Value, _ b: Value) throws -> Value {
        switch op {
        case "==": return .bool(a == b)
        case "!=": return .bool(a != b)
        case "<", ">", "<=", ">=":
            let c = try compare(a, b)
            switch op {
            case "<": return .bool(c < 0)
            case ">": return .bool(c > 0)
            case "<=": return .bool(c <= 0)
            default: return .bool(c >= 0)
            }
        case "in": return .bool(try contains(b, a))
        case "~": return .string(a.rendered + b.rendered)
        case "+":
            switch (a, b) {
            case (.string(let x), .string(let y)): return .string(x + y)
            case (.array(let x), .array(let y)): return .array(x + y)
            case (.int(let x), .int(let y)): return .int(x + y)
            default: return .double(try number(a, op) + number(b, op))
            }
        case "-":
            if case .int(let x) = a, case .int(let y) = b { return .int(x - y) }
            return .double(try number(a, op) - number(b, op))
        case "*":
            switch (a, b) {
            case (.int(let x), .int(let y)): return .int(x * y)
            case (.string(let s), .int(let n)), (.int(let n), .string(let s)): return .string(String(repeating: s, count: max(n, 0)))
            case (.array(let l), .int(let n)): return .array(Array([[Value]](repeating: l, count: max(n, 0)).joined()))
            default: return .double(try number(a, op) * number(b, op))
            }
        case "/": return .double(try number(a, op) / number(b, op))
        case "//":
            if case .int(let x) = a, case .int(let y) = b, y != 0 { return .int(Int((Double(x) / Double(y)).rounded(.down))) }
            return .double((try number(a, op) / number(b, op)).rounded(.down))
        case "%":
            if case .int(let x) = a, case .int(let y) = b, y != 0 { return .int(((x % y) + y) % y) }
            throw MLXEdgeError.template("unsupported % operands \(a.repr()) and \(b.repr())")
        case "**":
            if case .int(let x) = a, case .int(let y) = b, y >= 0 { return .int(Int(pow(Double(x), Double(y)))) }
            return .double(pow(try number(a, op), try number(b, op)))
        default: throw MLXEdgeError.template("unknown operator \(op)")
        }
    }

    static func number(_ v: Value, _ op: String = "") throws -> Double {
        switch v {
        case .int(let i): return Double(i)
        case .double(let d): return d
        case .bool(let b): return b ? 1 : 0
        default: throw MLXEdgeError.template("unsupported operand \(v.isUndefined ? "undefined" : v.repr()) for \(op)")
        }
    }

    static func int(_ v: Value) throws -> Int {
        switch v {
        case .int(let i): return i
        case .double(let d): return Int(d)
        case .bool(let b): return b ? 1 : 0
        case .string(let s): if let i = Int(s.trimmingCharacters(in: .whitespaces)) { return i }
        default: break
        }
        throw MLXEdgeError.template("expected an integer, got \(v.repr())")
    }

    static func compare(_ a: Value, _ b: Value) throws -> Int {
        switch (a, b) {
        case (.string(let x), .string(let y)):
            return x.unicodeScalars.lexicographicallyPrecedes(y.unicodeScalars) ? -1 : (x == y ? 0 : 1)
        default:
            let (x, y) = (try number(a, "comparison"), try number(b, "comparison"))
            return x < y ? -1 : (x == y ? 0 : 1)
        }
    }

    static func contains(_ container: Value, _ item: Value) throws -> Bool {
        switch container {
        case .string(let s):
            guard case .string(let sub) = item else { throw MLXEdgeError.template("'in <string>' needs a string") }
            return s.scalarContains(sub)
        case .array(let a): return a.contains(item)
        case .object(let o): if case .string(let k) = item { return o[k] != nil } else { return false }
        case .namespace(let ns): if case .string(let k) = item { return ns.attributes[k] != nil } else { return false }
        default: throw MLXEdgeError.template("argument of type \(container.isUndefined ? "undefined" : container.repr()) is not iterable")
        }
    }
}

// MARK: - equality and Python string helpers

extension Value: Equatable {
    public static func == (a: Value, b: Value) -> Bool {
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): return true
        case (.bool(let x), .bool(let y)): return x == y
        case (.int(let x), .int(let y)): return x == y
        case (.int(let x), .double(let y)), (.double(let y), .int(let x)): return Double(x) == y
        case (.double(let x), .double(let y)): return x == y
        case (.bool(let x), .int(let y)), (.int(let y), .bool(let x)): return (x ? 1 : 0) == y
        case (.string(let x), .string(let y)): return x.unicodeScalars.elementsEqual(y.unicodeScalars)
        case (.array(let x), .array(let y)): return x == y
        case (.object(let x), .object(let y)): return Set(x.keys) == Set(y.keys) && x.keys.allSatisfy { x[$0] == y[$0] }
        case (.namespace(let x), .namespace(let y)): return x === y
        default: return false
        }
    }
}

/// Python's str.strip/lstrip/rstrip: whitespace, or any of `chars`.
func strip(_ s: String, _ chars: Value?, left: Bool, right: Bool) -> String {
    let set: (Unicode.Scalar) -> Bool
    if case .string(let c)? = chars { let cs = Set(c.unicodeScalars); set = { cs.contains($0) } } else { set = { $0.properties.isWhitespace } }
    var u = Substring(s).unicodeScalars
    while left, let f = u.first, set(f) { u.removeFirst() }
    while right, let l = u.last, set(l) { u.removeLast() }
    return String(u)
}

/// Python's str.split: on runs of whitespace without a separator, else exactly at `sep`.
func split(_ s: String, _ sep: Value?, maxsplit: Int) -> [String] {
    guard case .string(let sepString)? = sep, !sepString.isEmpty else {
        var parts: [String] = []
        var current = String.UnicodeScalarView()
        var rest = Substring(s).unicodeScalars
        while let c = rest.first {
            rest.removeFirst()
            if c.properties.isWhitespace {
                if !current.isEmpty {
                    parts.append(String(current)); current = String.UnicodeScalarView()
                    if maxsplit >= 0 && parts.count == maxsplit {
                        while let f = rest.first, f.properties.isWhitespace { rest.removeFirst() }
                        if !rest.isEmpty { parts.append(String(rest)) }
                        return parts
                    }
                }
            } else { current.append(c) }
        }
        if !current.isEmpty { parts.append(String(current)) }
        return parts
    }
    var parts = s.scalarSplit(sepString)
    if maxsplit >= 0 && parts.count > maxsplit + 1 {
        parts = Array(parts[..<maxsplit]) + [parts[maxsplit...].joined(separator: sepString)]
    }
    return parts
}

func capitalize(_ s: String) -> String {
    guard let f = s.unicodeScalars.first else { return s }
    return String(f).uppercased() + String(s.unicodeScalars.dropFirst()).lowercased()
}

/// startswith/endswith accept a string or a tuple (list) of strings.
private func affixes(_ v: Value?) throws -> [String] {
    switch v {
    case .string(let s)?: return [s]
    case .array(let a)?: return a.map(\.rendered)
    default: throw MLXEdgeError.template("startswith/endswith need a string")
    }
}

/// json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=...), as transformers' tojson.
func toJSON(_ v: Value, indent: Int?, sortKeys: Bool = false, level: Int = 0) throws -> String {
    let (itemSep, keySep) = indent == nil ? (", ", ": ") : (",", ": ")
    func wrap(_ items: [String], _ open: String, _ close: String) -> String {
        guard !items.isEmpty else { return open + close }
        guard let indent else { return open + items.joined(separator: itemSep) + close }
        let pad = "\n" + String(repeating: " ", count: indent * (level + 1))
        return open + pad + items.joined(separator: itemSep + pad) + "\n" + String(repeating: " ", count: indent * level) + close
    }
    switch v {
    case .none: return "null"
    case .bool(let b): return b ? "true" : "false"
    case .int(let i): return String(i)
    case .double(let d): return d.isFinite ? pythonFloat(d) : (d.isNaN ? "NaN" : (d > 0 ? "Infinity" : "-Infinity"))
    case .string(let s): return jsonString(s)
    case .array(let a): return wrap(try a.map { try toJSON($0, indent: indent, sortKeys: sortKeys, level: level + 1) }, "[", "]")
    case .object(let o):
        let keys = sortKeys ? o.keys.sorted() : o.keys
        return wrap(try keys.map { jsonString($0) + keySep + (try toJSON(o[$0]!, indent: indent, sortKeys: sortKeys, level: level + 1)) }, "{", "}")
    case .namespace(let ns): return try toJSON(.object(ns.attributes), indent: indent, sortKeys: sortKeys, level: level)
    case .undefined, .callable: throw MLXEdgeError.template("\(v.isUndefined ? "undefined" : "function") is not JSON serializable")
    }
}

func jsonString(_ s: String) -> String {
    var out = "\""
    for c in s.unicodeScalars {
        switch c {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case "\u{08}": out += "\\b"
        case "\u{0C}": out += "\\f"
        default:
            if c.value < 0x20 { out += String(format: "\\u%04x", c.value) } else { out.unicodeScalars.append(c) }
        }
    }
    return out + "\""
}

/// The strftime directives templates use (%d %b %B %Y %m %H %M %S %A %a %y %j %%).
func strftime(_ format: String, _ date: Date) -> String {
    let f = DateFormatter()
    f.locale = Locale(identifier: "en_US_POSIX")
    var out = ""
    var it = format.makeIterator()
    while let c = it.next() {
        guard c == "%", let d = it.next() else { out.append(c); continue }
        let pattern: String? = ["d": "dd", "b": "MMM", "B": "MMMM", "Y": "yyyy", "y": "yy", "m": "MM", "H": "HH",
                                "M": "mm", "S": "ss", "A": "EEEE", "a": "EEE", "j": "DDD"][d]
        if let p = pattern { f.dateFormat = p; out += f.string(from: date) } else if d == "%" { out += "%" } else { out += "%" + String(d) }
    }
    return out
}
