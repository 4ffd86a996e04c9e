import Foundation

/// A value inside a template: what Jinja sees of Python objects.
public indirect enum Value: Sendable {
    case undefined
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([Value])
    case object(OrderedObject)
    case namespace(Namespace)
    case callable(Callable)

    /// Jinja truthiness (Python's): empty, zero, none and undefined are false.
    var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .array(let a): return !a.isEmpty
        case .object(let o): return !o.keys.isEmpty
        case .namespace, .callable: return true
        }
    }

    var isUndefined: Bool { if case .undefined = self { return true }; return false }

    /// `{{ value }}`: Python's str().
    var rendered: String {
        switch self {
        case .undefined: return ""
        case .string(let s): return s
        default: return repr(top: true)
        }
    }

    /// Python's repr (str() for the top level of numbers and booleans).
    func repr(top: Bool = false) -> String {
        switch self {
        case .undefined: return ""
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .double(let d): return pythonFloat(d)
        case .string(let s): return top ? s : pythonStringRepr(s)
        case .array(let a): return "[" + a.map { $0.repr() }.joined(separator: ", ") + "]"
        case .object(let o): return "{" + o.keys.map { "\(pythonStringRepr($0)): \(o.values[$0]!.repr())" }.joined(separator: ", ") + "}"
        case .namespace: return "<Namespace>"
        case .callable: return "<function>"
        }
    }
}

/// A dictionary that keeps insertion order (Python dicts do, and tojson shows it).
public struct OrderedObject: Sendable {
    public private(set) var keys: [String] = []
    public private(set) var values: [String: Value] = [:]

    public init(_ pairs: [(String, Value)] = []) { for (k, v) in pairs { self[k] = v } }

    public subscript(key: String) -> Value? {
        get { values[key] }
        set {
            if values[key] == nil, newValue != nil { keys.append(key) }
            if newValue == nil { keys.removeAll { $0 == key } }
            values[key] = newValue
        }
    }
}

/// `namespace(...)`: the one mutable object templates have (set ns.x = ... inside loops).
public final class Namespace: @unchecked Sendable {  // used by one render on one thread
    var attributes: OrderedObject
    init(_ a: OrderedObject) { attributes = a }
}

/// A global function or macro: positional and keyword arguments -> value.
public struct Callable: Sendable {
    let call: @Sendable ([Value], [(String, Value)]) throws -> Value
}

extension Value: ExpressibleByStringLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
                 ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral {
    public init(stringLiteral s: String) { self = .string(s) }
    public init(booleanLiteral b: Bool) { self = .bool(b) }
    public init(integerLiteral i: Int) { self = .int(i) }
    public init(arrayLiteral elements: Value...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, Value)...) { self = .object(OrderedObject(elements)) }
}

extension Value {
    /// From a JSON value (messages, tools and extra context usually arrive as JSON).
    public init(json: JSONValue) {
        switch json {
        case .null: self = .none
        case .bool(let b): self = .bool(b)
        case .number(let d): self = d == d.rounded() && abs(d) < 1e15 ? .int(Int(d)) : .double(d)
        case .string(let s): self = .string(s)
        case .array(let a): self = .array(a.map(Value.init(json:)))
        case .object(let o): self = .object(OrderedObject(o.keys.sorted().map { ($0, Value(json: o[$0]!)) }))
        }
    }
}

/// Python's repr of a float: Swift prints the same shortest round-trip form ("1.0", "1e-05", "1e+16").
func pythonFloat(_ d: Double) -> String {
    if d.isNaN { return "nan" }
    if d.isInfinite { return d > 0 ? "inf" : "-inf" }
    return "\(d)"
}

/// Python's repr of a str: single quotes unless the text has ' and no ".
func pythonStringRepr(_ s: String) -> String {
    let q: Character = s.contains("'") && !s.contains("\"") ? "\"" : "'"
    var out = String(q)
    for c in s.unicodeScalars {
        switch c {
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if Character(c) == q { out += "\\" + String(q) }
            else if c.value < 0x20 || c.value == 0x7F { out += String(format: "\\x%02x", c.value) }
            else { out.unicodeScalars.append(c) }
        }
    }
    return out + String(q)
}
