/// The template as a tree. Expressions follow Jinja's precedence, lowest first:
/// `a if c else b`, or, and, not, comparisons / in / is, + -, ~, * / // %, **, unary -,
/// then postfix `.attr`, `[index]`, `(call)`, `| filter` and `is test`.
indirect enum Expr {
    case literal(Value)
    case name(String)
    case list([Expr])
    case dict([(Expr, Expr)])
    case attribute(Expr, String)
    case index(Expr, Expr)
    case slice(Expr, Expr?, Expr?, Expr?)
    case call(Expr, [Expr], [(String, Expr)])
    case filter(Expr, String, [Expr], [(String, Expr)])
    case test(Expr, String, [Expr], negated: Bool)
    case unary(String, Expr)
    case binary(String, Expr, Expr)
    case conditional(Expr, Expr, Expr?)  // then, condition, else
}

indirect enum Node {
    case text(String)
    case output(Expr)
    case forLoop(targets: [String], iterable: Expr, condition: Expr?, body: [Node], elseBody: [Node])
    case ifChain([(Expr, [Node])], elseBody: [Node])
    case set(target: Expr, value: Expr)
    case setBlock(name: String, body: [Node])
    case macro(name: String, params: [(String, Expr?)], body: [Node])
    case breakLoop, continueLoop
}

struct Parser {
    private var chunks: [Chunk]
    private var pos = 0

    init(_ chunks: [Chunk]) { self.chunks = chunks }

    static func parse(_ template: String) throws -> [Node] {
        var p = Parser(try Lexer(template).chunks())
        let (nodes, end) = try p.parseBlock(until: [])
        if let end { throw MLXEdgeError.template("unexpected {% \(end) %}") }
        return nodes
    }

    /// Nodes up to one of the `until` statements (returned, not consumed beyond its keyword).
    private mutating func parseBlock(until: Set<String>) throws -> ([Node], String?) {
        var nodes: [Node] = []
        while pos < chunks.count {
            let chunk = chunks[pos]
            pos += 1
            switch chunk {
            case .text(let t): nodes.append(.text(t))
            case .output(let tokens):
                var e = ExprParser(tokens)
                nodes.append(.output(try e.parseAll()))
            case .statement(let tokens):
                guard case .name(let keyword)? = tokens.first else { throw MLXEdgeError.template("empty statement") }
                if until.contains(keyword) {
                    pos -= 1
                    return (nodes, keyword)
                }
                nodes.append(try parseStatement(keyword, Array(tokens.dropFirst())))
            }
        }
        if !until.isEmpty { throw MLXEdgeError.template("missing {% \(until.sorted().joined(separator: " / ")) %}") }
        return (nodes, nil)
    }

    /// The tokens of the statement that ended a block (pos points at it), consuming it.
    private mutating func takeEnd() -> [Token] {
        guard case .statement(let t) = chunks[pos] else { return [] }
        pos += 1
        return Array(t.dropFirst())
    }

    private mutating func parseStatement(_ keyword: String, _ rest: [Token]) throws -> Node {
        var e = ExprParser(rest)
        switch keyword {
        case "for":
            var targets: [String] = []
            repeat {
                guard case .name(let n)? = e.next() else { throw MLXEdgeError.template("for needs a loop variable") }
                targets.append(n)
            } while e.accept(.op(","))
            try e.expect(.name("in"))
            let iterable = try e.parseExpression(allowConditional: false)
            let condition = e.accept(.name("if")) ? try e.parseExpression() : nil
            try e.expectEnd()
            var (body, end) = try parseBlock(until: ["else", "endfor"])
            var elseBody: [Node] = []
            _ = takeEnd()
            if end == "else" { (elseBody, end) = try parseBlock(until: ["endfor"]); _ = takeEnd() }
            return .forLoop(targets: targets, iterable: iterable, condition: condition, body: body, elseBody: elseBody)
        case "if":
            var branches: [(Expr, [Node])] = []
            var condition = try e.parseAll()
            while true {
                let (body, end) = try parseBlock(until: ["elif", "else", "endif"])
                branches.append((condition, body))
                let endTokens = takeEnd()
                if end == "elif" {
                    var c = ExprParser(endTokens)
                    condition = try c.parseAll()
                    continue
                }
                var elseBody: [Node] = []
                if end == "else" { (elseBody, _) = try parseBlock(until: ["endif"]); _ = takeEnd() }
                return .ifChain(branches, elseBody: elseBody)
            }
        case "set":
            let target = try e.parsePrimaryTarget()
            if e.accept(.op("=")) {
                let value = try e.parseAll()
                return .set(target: target, value: value)
            }
            guard case .name(let name) = target else { throw MLXEdgeError.template("block set needs a name") }
            try e.expectEnd()
            let (body, _) = try parseBlock(until: ["endset"])
            _ = takeEnd()
            return .setBlock(name: name, body: body)
        case "macro":
            guard case .name(let name)? = e.next() else { throw MLXEdgeError.template("macro needs a name") }
            try e.expect(.op("("))
            var params: [(String, Expr?)] = []
            while !e.accept(.op(")")) {
                guard case .name(let p)? = e.next() else { throw MLXEdgeError.template("bad macro parameter") }
                params.append((p, e.accept(.op("=")) ? try e.parseExpression() : nil))
                _ = e.accept(.op(","))
            }
            try e.expectEnd()
            let (body, _) = try parseBlock(until: ["endmacro"])
            _ = takeEnd()
            return .macro(name: name, params: params, body: body)
        case "break": return .breakLoop
        case "continue": return .continueLoop
        case "generation", "endgeneration": return .text("")  // transformers' assistant-mask markers
        default:
            throw MLXEdgeError.template("unsupported statement {% \(keyword) %}")
        }
    }
}

/// Recursive descent over the tokens of one tag.
struct ExprParser {
    private let tokens: [Token]
    private var pos = 0

    init(_ tokens: [Token]) { self.tokens = tokens }

    var atEnd: Bool { pos >= tokens.count }
    func peek(_ k: Int = 0) -> Token? { pos + k < tokens.count ? tokens[pos + k] : nil }
    mutating func next() -> Token? { defer { pos += 1 }; return peek() }
    mutating func accept(_ t: Token) -> Bool {
        if peek() == t { pos += 1; return true }
        return false
    }
    mutating func expect(_ t: Token) throws {
        guard accept(t) else { throw MLXEdgeError.template("expected \(t), found \(peek().map { "\($0)" } ?? "end of tag")") }
    }
    func expectEnd() throws {
        if !atEnd { throw MLXEdgeError.template("unexpected \(peek()!) in tag") }
    }

    mutating func parseAll() throws -> Expr {
        let e = try parseExpression()
        try expectEnd()
        return e
    }

    /// `name` or `name.attr` (the left side of set).
    mutating func parsePrimaryTarget() throws -> Expr {
        guard case .name(let n)? = next() else { throw MLXEdgeError.template("set needs a name") }
        var e = Expr.name(n)
        while accept(.op(".")) {
            guard case .name(let a)? = next() else { throw MLXEdgeError.template("bad attribute") }
            e = .attribute(e, a)
        }
        return e
    }

    mutating func parseExpression(allowConditional: Bool = true) throws -> Expr {
        let e = try parseOr()
        if allowConditional, accept(.name("if")) {
            let condition = try parseOr()
            let other = accept(.name("else")) ? try parseExpression() : nil
            return .conditional(e, condition, other)
        }
        return e
    }

    private mutating func parseOr() throws -> Expr {
        var e = try parseAnd()
        while accept(.name("or")) { e = .binary("or", e, try parseAnd()) }
        return e
    }

    private mutating func parseAnd() throws -> Expr {
        var e = try parseNot()
        while accept(.name("and")) { e = .binary("and", e, try parseNot()) }
        return e
    }

    private mutating func parseNot() throws -> Expr {
        if accept(.name("not")) { return .unary("not", try parseNot()) }
        return try parseCompare()
    }

    private mutating func parseCompare() throws -> Expr {
        var e = try parseMath1()
        while true {
            if case .op(let o)? = peek(), ["==", "!=", "<", ">", "<=", ">="].contains(o) {
                pos += 1
                e = .binary(o, e, try parseMath1())
            } else if accept(.name("in")) {
                e = .binary("in", e, try parseMath1())
            } else if peek() == .name("not"), peek(1) == .name("in") {
                pos += 2
                e = .unary("not", .binary("in", e, try parseMath1()))
            } else {
                return e
            }
        }
    }

    private mutating func parseMath1() throws -> Expr {
        var e = try parseConcat()
        while case .op(let o)? = peek(), o == "+" || o == "-" {
            pos += 1
            e = .binary(o, e, try parseConcat())
        }
        return e
    }

    private mutating func parseConcat() throws -> Expr {
        var e = try parseMath2()
        while accept(.op("~")) { e = .binary("~", e, try parseMath2()) }
        return e
    }

    private mutating func parseMath2() throws -> Expr {
        var e = try parsePow()
        while case .op(let o)? = peek(), ["*", "/", "//", "%"].contains(o) {
            pos += 1
            e = .binary(o, e, try parsePow())
        }
        return e
    }

    private mutating func parsePow() throws -> Expr {
        var e = try parseUnary()
        while accept(.op("**")) { e = .binary("**", e, try parseUnary()) }
        return e
    }

    private mutating func parseUnary(withFilters: Bool = true) throws -> Expr {
        var e: Expr
        if accept(.op("-")) { e = .unary("-", try parseUnary(withFilters: false)) }
        else if accept(.op("+")) { e = try parseUnary(withFilters: false) }
        else { e = try parsePostfix(try parsePrimary()) }
        return withFilters ? try parseFilters(e) : e
    }

    private mutating func parsePrimary() throws -> Expr {
        switch next() {
        case .name(let n)?:
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(n)
            }
        case .string(var s)?:
            while case .string(let more)? = peek() { s += more; pos += 1 }  // adjacent literals join
            return .literal(.string(s))
        case .int(let i)?: return .literal(.int(i))
        case .float(let d)?: return .literal(.double(d))
        case .op("(")?:
            if accept(.op(")")) { return .list([]) }
            let e = try parseExpression()
            if accept(.op(",")) {  // a tuple: treated as a list
                var items = [e]
                while !accept(.op(")")) { items.append(try parseExpression()); _ = accept(.op(",")) }
                return .list(items)
            }
            try expect(.op(")"))
            return e
        case .op("[")?:
            var items: [Expr] = []
            while !accept(.op("]")) { items.append(try parseExpression()); _ = accept(.op(",")) }
            return .list(items)
        case .op("{")?:
            var pairs: [(Expr, Expr)] = []
            while !accept(.op("}")) {
                let k = try parseExpression()
                try expect(.op(":"))
                pairs.append((k, try parseExpression()))
                _ = accept(.op(","))
            }
            return .dict(pairs)
        case let t: throw MLXEdgeError.template("unexpected \(t.map { "\($0)" } ?? "end of expression")")
        }
    }

    private mutating func parsePostfix(_ start: Expr) throws -> Expr {
        var e = start
        while true {
            if accept(.op(".")) {
                guard case .name(let a)? = next() else { throw MLXEdgeError.template("bad attribute access") }
                e = .attribute(e, a)
            } else if accept(.op("[")) {
                e = try parseSubscript(e)
            } else if peek() == .op("(") {
                pos += 1
                let (args, kwargs) = try parseArguments()
                e = .call(e, args, kwargs)
            } else {
                return e
            }
        }
    }

    private mutating func parseSubscript(_ target: Expr) throws -> Expr {
        var parts: [Expr?] = [nil]
        var isSlice = false
        while !accept(.op("]")) {
            if accept(.op(":")) { isSlice = true; parts.append(nil); continue }
            parts[parts.count - 1] = try parseExpression()
        }
        if !isSlice {
            guard let i = parts[0] else { throw MLXEdgeError.template("empty subscript") }
            return .index(target, i)
        }
        while parts.count < 3 { parts.append(nil) }
        return .slice(target, parts[0], parts[1], parts[2])
    }

    /// After "(": arguments up to ")".
    private mutating func parseArguments() throws -> ([Expr], [(String, Expr)]) {
        var args: [Expr] = [], kwargs: [(String, Expr)] = []
        while !accept(.op(")")) {
            if case .name(let k)? = peek(), peek(1) == .op("=") {
                pos += 2
                kwargs.append((k, try parseExpression()))
            } else {
                args.append(try parseExpression())
            }
            _ = accept(.op(","))
        }
        return (args, kwargs)
    }

    private mutating func parseFilters(_ start: Expr) throws -> Expr {
        var e = start
        while true {
            if accept(.op("|")) {
                guard case .name(let f)? = next() else { throw MLXEdgeError.template("bad filter") }
                var args: [Expr] = [], kwargs: [(String, Expr)] = []
                if accept(.op("(")) { (args, kwargs) = try parseArguments() }
                e = .filter(e, f, args, kwargs)
            } else if accept(.name("is")) {
                let negated = accept(.name("not"))
                guard case .name(let t)? = next() else { throw MLXEdgeError.template("bad test") }
                var args: [Expr] = []
                if accept(.op("(")) {
                    args = try parseArguments().0
                } else if let n = peek(), startsPrimary(n) {
                    // `is divisibleby 3`, `is equalto 'x'`, `is sameas none`: one bare argument
                    args = [try parsePostfix(try parsePrimary())]
                }
                e = .test(e, t, args, negated: negated)
            } else {
                return e
            }
        }
    }

    private func startsPrimary(_ t: Token) -> Bool {
        switch t {
        case .string, .int, .float: return true
        case .name(let n): return !["and", "or", "if", "else", "is", "in", "not"].contains(n)
        default: return false
        }
    }
}
