import Foundation

/// A parsed chat template; `render` evaluates it like jinja2 in transformers' sandbox
/// (trim_blocks, lstrip_blocks, loop controls, `raise_exception`, `strftime_now`, their `tojson`).
public struct ChatTemplate: Sendable {
    let nodes: [Node]

    public init(_ source: String) throws { nodes = try Parser.parse(source) }

    /// Render with `context` as the template's variables (messages, add_generation_prompt,
    /// bos_token, tools, ...).
    public func render(_ context: [String: Value]) throws -> String {
        let interpreter = Interpreter()
        let scope = Scope(parent: nil)
        for (k, v) in Builtins.globals { scope.vars[k] = v }
        for (k, v) in context { scope.vars[k] = v }
        var out = ""
        _ = try interpreter.run(nodes, scope, &out)
        return out
    }
}

extension Node: @unchecked Sendable {}  // immutable after parsing
extension Expr: @unchecked Sendable {}

final class Scope {
    var vars: [String: Value] = [:]
    let parent: Scope?
    init(parent: Scope?) { self.parent = parent }

    func lookup(_ name: String) -> Value {
        var s: Scope? = self
        while let c = s {
            if let v = c.vars[name] { return v }
            s = c.parent
        }
        return .undefined
    }
}

struct Interpreter {
    enum Flow { case normal, breakLoop, continueLoop }

    func run(_ nodes: [Node], _ scope: Scope, _ out: inout String) throws -> Flow {
        for node in nodes {
            switch node {
            case .text(let t): out += t
            case .output(let e): out += try eval(e, scope).rendered
            case .set(let target, let value):
                let v = try eval(value, scope)
                switch target {
                case .name(let n): scope.vars[n] = v
                case .attribute(let obj, let attr):
                    guard case .namespace(let ns) = try eval(obj, scope) else {
                        throw MLXEdgeError.template("can only set attributes of a namespace")
                    }
                    ns.attributes[attr] = v
                default: throw MLXEdgeError.template("bad set target")
                }
            case .setBlock(let name, let body):
                var captured = ""
                _ = try run(body, scope, &captured)
                scope.vars[name] = .string(captured)
            case .ifChain(let branches, let elseBody):
                var taken = false
                for (condition, body) in branches where try eval(condition, scope).truthy {
                    taken = true
                    let flow = try run(body, scope, &out)
                    if flow != .normal { return flow }
                    break
                }
                if !taken {
                    let flow = try run(elseBody, scope, &out)
                    if flow != .normal { return flow }
                }
            case .forLoop(let targets, let iterable, let condition, let body, let elseBody):
                try runFor(targets, try eval(iterable, scope), condition, body, elseBody, scope, &out)
            case .macro(let name, let params, let body):
                scope.vars[name] = makeMacro(params, body, scope)
            case .breakLoop: return .breakLoop
            case .continueLoop: return .continueLoop
            }
        }
        return .normal
    }

    private func runFor(_ targets: [String], _ iterable: Value, _ condition: Expr?, _ body: [Node], _ elseBody: [Node],
                        _ scope: Scope, _ out: inout String) throws {
        var items: [Value]
        switch iterable {
        case .array(let a): items = a
        case .object(let o): items = o.keys.map { .string($0) }
        case .string(let s): items = s.unicodeScalars.map { .string(String($0)) }
        case .undefined, .none: items = []
        default: throw MLXEdgeError.template("cannot loop over \(iterable.repr())")
        }
        func bind(_ item: Value, _ s: Scope) throws {
            if targets.count == 1 { s.vars[targets[0]] = item; return }
            guard case .array(let parts) = item, parts.count == targets.count else {
                throw MLXEdgeError.template("cannot unpack \(item.repr()) into \(targets.count) names")
            }
            for (t, v) in zip(targets, parts) { s.vars[t] = v }
        }
        if let condition {  // `for x in xs if cond`: filtered before loop.* is computed
            items = try items.filter { item in
                let s = Scope(parent: scope)
                try bind(item, s)
                return try eval(condition, s).truthy
            }
        }
        if items.isEmpty {
            _ = try run(elseBody, scope, &out)
            return
        }
        let n = items.count
        for (i, item) in items.enumerated() {
            let s = Scope(parent: scope)
            try bind(item, s)
            var loop = OrderedObject()
            loop["index"] = .int(i + 1)
            loop["index0"] = .int(i)
            loop["revindex"] = .int(n - i)
            loop["revindex0"] = .int(n - i - 1)
            loop["first"] = .bool(i == 0)
            loop["last"] = .bool(i == n - 1)
            loop["length"] = .int(n)
            loop["previtem"] = i > 0 ? items[i - 1] : .undefined
            loop["nextitem"] = i < n - 1 ? items[i + 1] : .undefined
            loop["cycle"] = .callable(Callable { args, _ in args.isEmpty ? .none : args[i % args.count] })
            s.vars["loop"] = .object(loop)
            if try run(body, s, &out) == .breakLoop { break }
        }
    }

    private func makeMacro(_ params: [(String, Expr?)], _ body: [Node], _ defining: Scope) -> Value {
        let shared = UncheckedSendable((params, body, defining))
        return .callable(Callable { args, kwargs in
            let (params, body, defining) = shared.value
            let s = Scope(parent: defining)
            for (i, (name, def)) in params.enumerated() {
                if i < args.count { s.vars[name] = args[i] }
                else if let kw = kwargs.first(where: { $0.0 == name }) { s.vars[name] = kw.1 }
                else if let def { s.vars[name] = try Interpreter().eval(def, defining) }
                else { s.vars[name] = .undefined }
            }
            var out = ""
            _ = try Interpreter().run(body, s, &out)
            return .string(out)
        })
    }

    func eval(_ e: Expr, _ scope: Scope) throws -> Value {
        switch e {
        case .literal(let v): return v
        case .name(let n): return scope.lookup(n)
        case .list(let items): return .array(try items.map { try eval($0, scope) })
        case .dict(let pairs):
            var o = OrderedObject()
            for (k, v) in pairs {
                guard case .string(let key) = try eval(k, scope) else { throw MLXEdgeError.template("dict keys must be strings") }
                o[key] = try eval(v, scope)
            }
            return .object(o)
        case .attribute(let obj, let name):
            return try Builtins.attribute(try eval(obj, scope), name)
        case .index(let obj, let index):
            return try Builtins.subscript(try eval(obj, scope), try eval(index, scope))
        case .slice(let obj, let a, let b, let c):
            return try Builtins.slice(try eval(obj, scope), try a.map { try eval($0, scope) },
                                      try b.map { try eval($0, scope) }, try c.map { try eval($0, scope) })
        case .call(let f, let args, let kwargs):
            let fn = try eval(f, scope)
            guard case .callable(let c) = fn else {
                if case .undefined = fn { throw MLXEdgeError.template("\(describe(f)) is undefined") }
                throw MLXEdgeError.template("\(describe(f)) is not callable")
            }
            return try c.call(try args.map { try eval($0, scope) }, try kwargs.map { ($0.0, try eval($0.1, scope)) })
        case .filter(let x, let name, let args, let kwargs):
            return try Builtins.filter(name, try eval(x, scope), try args.map { try eval($0, scope) },
                                       try kwargs.map { ($0.0, try eval($0.1, scope)) })
        case .test(let x, let name, let args, let negated):
            let r = try Builtins.test(name, try eval(x, scope), try args.map { try eval($0, scope) })
            return .bool(r != negated)
        case .unary(let op, let x):
            let v = try eval(x, scope)
            if op == "not" { return .bool(!v.truthy) }
            switch v {
            case .int(let i): return .int(-i)
            case .double(let d): return .double(-d)
            default: throw MLXEdgeError.template("cannot negate \(v.repr())")
            }
        case .binary("and", let a, let b):
            let l = try eval(a, scope)
            return l.truthy ? try eval(b, scope) : l
        case .binary("or", let a, let b):
            let l = try eval(a, scope)
            return l.truthy ? l : try eval(b, scope)
        case .binary(let op, let a, let b):
            return try Builtins.binary(op, try eval(a, scope), try eval(b, scope))
        case .conditional(let then, let condition, let other):
            if try eval(condition, scope).truthy { return try eval(then, scope) }
            return try other.map { try eval($0, scope) } ?? .undefined
        }
    }

    private func describe(_ e: Expr) -> String {
        switch e {
        case .name(let n): return n
        case .attribute(let o, let a): return "\(describe(o)).\(a)"
        default: return "expression"
        }
    }
}
