import Foundation

/// Jinja's filters and tests, as transformers' sandboxed jinja2 provides them.
extension Builtins {
    // MARK: filters

    static func filter(_ name: String, _ v: Value, _ args: [Value], _ kwargs: [(String, Value)]) throws -> Value {
        func kw(_ key: String, _ position: Int) -> Value? {
            kwargs.first { $0.0 == key }?.1 ?? (position < args.count ? args[position] : nil)
        }
        switch name {
        case "trim": return .string(strip(v.rendered, kw("chars", 0), left: true, right: true))
        case "length", "count":
            switch v {
            case .string(let s): return .int(s.unicodeScalars.count)
            case .array(let a): return .int(a.count)
            case .object(let o): return .int(o.keys.count)
            default: throw MLXEdgeError.template("object of type \(v.repr()) has no length")
            }
        case "upper": return .string(v.rendered.uppercased())
        case "lower": return .string(v.rendered.lowercased())
        case "capitalize": return .string(capitalize(v.rendered))
        case "title": return .string(v.rendered.capitalized)
        case "string": return .string(v.rendered)
        case "int": return .int((try? int(v)) ?? Int((try? number(v)) ?? 0))
        case "float": return .double((try? number(v)) ?? Double(v.rendered) ?? 0)
        case "abs":
            if case .int(let i) = v { return .int(abs(i)) }
            return .double(abs(try number(v)))
        case "safe": return v
        case "escape", "e":
            return .string(v.rendered.scalarReplacing("&", with: "&amp;").scalarReplacing("<", with: "&lt;")
                .scalarReplacing(">", with: "&gt;").scalarReplacing("\"", with: "&#34;").scalarReplacing("'", with: "&#39;"))
        case "default", "d":
            let fallback = kw("default_value", 0) ?? .string("")
            let boolean = kw("boolean", 1)?.truthy ?? false
            return v.isUndefined || (boolean && !v.truthy) ? fallback : v
        case "first": return try list(v).first ?? .undefined
        case "last": return try list(v).last ?? .undefined
        case "list": return .array(try list(v))
        case "reverse":
            if case .string(let s) = v { return .string(String(s.unicodeScalars.reversed().map(Character.init))) }
            return .array(try list(v).reversed())
        case "join":
            var items = try list(v)
            if let attr = kw("attribute", 1) { items = try items.map { try attribute($0, attr.rendered) } }
            return .string(items.map(\.rendered).joined(separator: kw("d", 0)?.rendered ?? ""))
        case "map":
            let items = try list(v)
            if let attr = kwargs.first(where: { $0.0 == "attribute" })?.1 {
                return .array(try items.map { try attribute($0, attr.rendered) })
            }
            guard case .string(let f)? = args.first else { throw MLXEdgeError.template("map needs a filter or attribute=") }
            return .array(try items.map { try filter(f, $0, Array(args.dropFirst()), []) })
        case "selectattr", "rejectattr":
            guard case .string(let attr)? = args.first else { throw MLXEdgeError.template("\(name) needs an attribute") }
            let keep = name == "selectattr"
            return .array(try list(v).filter { item in
                let a = try attribute(item, attr)
                let ok = args.count > 1 ? try test(args[1].rendered, a, Array(args.dropFirst(2))) : a.truthy
                return ok == keep
            })
        case "select", "reject":
            let keep = name == "select"
            return .array(try list(v).filter { item in
                let ok = args.isEmpty ? item.truthy : try test(args[0].rendered, item, Array(args.dropFirst()))
                return ok == keep
            })
        case "unique":
            var seen: [Value] = []
            for x in try list(v) where !seen.contains(x) { seen.append(x) }
            return .array(seen)
        case "sort":
            let reverse = kw("reverse", 0)?.truthy ?? false
            let attr = kw("attribute", 2)
            var items = try list(v)
            try items.sort { a, b in
                let (x, y) = attr.map { (try? attribute(a, $0.rendered), try? attribute(b, $0.rendered)) } ?? (a, b)
                return try compare(x ?? .none, y ?? .none) < 0
            }
            return .array(reverse ? items.reversed() : items)
        case "items":
            guard case .object(let o) = v else { throw MLXEdgeError.template("items needs a mapping") }
            return .array(o.keys.map { .array([.string($0), o[$0]!]) })
        case "replace":
            guard args.count >= 2 else { throw MLXEdgeError.template("replace needs 2 arguments") }
            return .string(v.rendered.scalarReplacing(args[0].rendered, with: args[1].rendered))
        case "round":
            let digits = try kw("precision", 0).map { try int($0) } ?? 0
            let p = pow(10, Double(digits))
            return .double((try number(v) * p).rounded(.toNearestOrEven) / p)
        case "indent":
            let width = try kw("width", 0).map { try int($0) } ?? 4
            let first = kw("first", 1)?.truthy ?? false
            let pad = String(repeating: " ", count: width)
            let lines = v.rendered.scalarSplit("\n")
            return .string(lines.enumerated().map { i, l in (i == 0 && !first) || l.isEmpty ? l : pad + l }.joined(separator: "\n"))
        case "tojson":
            let indent = try kw("indent", 0).flatMap { $0 == .none ? nil : try int($0) }
            return .string(try toJSON(v, indent: indent, sortKeys: kw("sort_keys", 3)?.truthy ?? false))
        default:
            throw MLXEdgeError.template("unsupported filter \(name)")
        }
    }

    static func list(_ v: Value) throws -> [Value] {
        switch v {
        case .array(let a): return a
        case .string(let s): return s.unicodeScalars.map { .string(String($0)) }
        case .object(let o): return o.keys.map { .string($0) }
        case .undefined, .none: return []
        default: throw MLXEdgeError.template("\(v.repr()) is not iterable")
        }
    }

    // MARK: tests

    static func test(_ name: String, _ v: Value, _ args: [Value]) throws -> Bool {
        switch name {
        case "defined": return !v.isUndefined
        case "undefined": return v.isUndefined
        case "none": return v == .none
        case "string": if case .string = v { return true }; return false
        case "number": switch v { case .int, .double: return true; default: return false }
        case "integer": if case .int = v { return true }; return false
        case "float": if case .double = v { return true }; return false
        case "boolean": if case .bool = v { return true }; return false
        case "true": return v == .bool(true)
        case "false": return v == .bool(false)
        case "mapping": switch v { case .object, .namespace: return true; default: return false }
        case "iterable": switch v { case .array, .object, .string: return true; default: return false }
        case "sequence": switch v { case .array, .string, .object: return true; default: return false }
        case "callable": if case .callable = v { return true }; return false
        case "equalto", "eq", "==", "sameas": return args.first.map { v == $0 } ?? false
        case "ne", "!=": return args.first.map { v != $0 } ?? true
        case "lt", "<", "lessthan": return try compare(v, args.first ?? .none) < 0
        case "gt", ">", "greaterthan": return try compare(v, args.first ?? .none) > 0
        case "le", "<=": return try compare(v, args.first ?? .none) <= 0
        case "ge", ">=": return try compare(v, args.first ?? .none) >= 0
        case "in": return try contains(args.first ?? .none, v)
        case "odd": return try int(v) % 2 != 0
        case "even": return try int(v) % 2 == 0
        case "divisibleby": return try int(v) % int(args.first ?? 1) == 0
        case "lower": return v.rendered == v.rendered.lowercased()
        case "upper": return v.rendered == v.rendered.uppercased()
        default: throw MLXEdgeError.template("unsupported test \(name)")
        }
    }
}
