import Foundation

/// Template source -> text / `{{ expr }}` / `{% stmt %}` chunks, with Jinja's whitespace control as
/// transformers configures it: `trim_blocks` (drop the newline after a block tag), `lstrip_blocks`
/// (drop spaces before a block tag that starts its line), and `-` / `+` modifiers on any tag.
enum Chunk: Equatable {
    case text(String)
    case output([Token])
    case statement([Token])
}

enum Token: Equatable {
    case name(String)
    case string(String)
    case int(Int)
    case float(Double)
    case op(String)  // punctuation and operators: ( ) [ ] { } , . : | ~ + - * / // % ** = == != < > <= >=
}

struct Lexer {
    /// The template as Unicode scalars, newlines normalized to "\n" and one trailing newline
    /// dropped, as Jinja's lexer does (keep_trailing_newline=False).
    let source: [Unicode.Scalar]

    init(_ template: String) {
        var s = template.replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\r", with: "\n")
        if s.hasSuffix("\n") { s.removeLast() }
        source = Array(s.unicodeScalars)
    }

    func chunks() throws -> [Chunk] {
        var out: [Chunk] = []
        var text = String.UnicodeScalarView()
        var i = 0
        var lineStarting = true  // the previous tag's match ended with a newline (or template start)
        let n = source.count
        func isSpace(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace }
        while i < n {
            guard source[i] == "{", i + 1 < n, source[i + 1] == "{" || source[i + 1] == "%" || source[i + 1] == "#" else {
                text.append(source[i])
                i += 1
                continue
            }
            let kind = source[i + 1]
            var j = i + 2
            var modifier: Unicode.Scalar? = nil
            if j < n, source[j] == "-" || source[j] == "+" { modifier = source[j]; j += 1 }
            if modifier == "-" {
                while let last = text.last, isSpace(last) { text.removeLast() }
            } else if kind != "{" && modifier != "+" {
                // lstrip_blocks: whitespace between the line start and a block tag goes away.
                let lineStart = text.lastIndex(of: "\n").map { text.index(after: $0) }
                if lineStart != nil || lineStarting {
                    let from = lineStart ?? text.startIndex
                    if text[from...].allSatisfy(isSpace) { text.removeSubrange(from...) }
                }
            }
            if !text.isEmpty { out.append(.text(String(text))) }
            text = String.UnicodeScalarView()
            let close: Unicode.Scalar = kind == "{" ? "}" : kind == "%" ? "%" : "#"
            // Find the closing delimiter, skipping string literals inside the tag.
            var k = j
            var quote: Unicode.Scalar? = nil
            var end = -1
            while k < n {
                let c = source[k]
                if let q = quote {
                    if c == "\\" { k += 2; continue }
                    if c == q { quote = nil }
                } else if kind != "#" && (c == "'" || c == "\"") {
                    quote = c
                } else if c == close, k + 1 < n, source[k + 1] == "}" {
                    end = k
                    break
                }
                k += 1
            }
            guard end >= 0 else { throw MLXEdgeError.template("unclosed tag at offset \(i)") }
            var bodyEnd = end
            var rightStrip = false, rightKeep = false
            if bodyEnd > j, source[bodyEnd - 1] == "-" { rightStrip = true; bodyEnd -= 1 }
            else if bodyEnd > j, source[bodyEnd - 1] == "+" { rightKeep = true; bodyEnd -= 1 }
            let body = String(String.UnicodeScalarView(source[j..<bodyEnd]))
            i = end + 2
            switch kind {
            case "{": out.append(.output(try tokenize(body)))
            case "%":
                let tokens = try tokenize(body)
                if tokens == [.name("raw")] {
                    // {% raw %}...{% endraw %}: copy verbatim.
                    let rest = String(String.UnicodeScalarView(source[i...]))
                    guard let r = rest.range(of: #"\{%-?\s*endraw\s*-?%\}"#, options: .regularExpression) else {
                        throw MLXEdgeError.template("raw without endraw")
                    }
                    out.append(.text(String(rest[..<r.lowerBound])))
                    i += rest.unicodeScalars.distance(from: rest.startIndex, to: r.upperBound)
                    lineStarting = false
                    continue
                }
                out.append(.statement(tokens))
            default: break  // comment
            }
            // What the tag's match swallows after it: all whitespace for `-`, else one newline
            // after a block tag or comment (trim_blocks).
            lineStarting = false
            if rightStrip {
                while i < n, isSpace(source[i]) { lineStarting = source[i] == "\n"; i += 1 }
            } else if kind != "{", !rightKeep, i < n, source[i] == "\n" {
                i += 1
                lineStarting = true
            }
        }
        if !text.isEmpty { out.append(.text(String(text))) }
        return out
    }

    /// The inside of a tag -> tokens.
    func tokenize(_ s: String) throws -> [Token] {
        let c = Array(s)
        var out: [Token] = []
        var i = 0
        while i < c.count {
            let ch = c[i]
            if ch.isWhitespace { i += 1; continue }
            if ch.isLetter || ch == "_" {
                var j = i
                while j < c.count, c[j].isLetter || c[j].isNumber || c[j] == "_" { j += 1 }
                out.append(.name(String(c[i..<j])))
                i = j
            } else if ch.isASCII && ch.isNumber {
                var j = i
                while j < c.count, c[j].isASCII && (c[j].isNumber || c[j] == "_") { j += 1 }
                if j + 1 < c.count, c[j] == ".", c[j + 1].isASCII && c[j + 1].isNumber {
                    j += 1
                    while j < c.count, c[j].isASCII && c[j].isNumber { j += 1 }
                    out.append(.float(Double(String(c[i..<j]))!))
                } else {
                    out.append(.int(Int(String(c[i..<j]).replacingOccurrences(of: "_", with: ""))!))
                }
                i = j
            } else if ch == "'" || ch == "\"" {
                var j = i + 1
                var value = ""
                while j < c.count, c[j] != ch {
                    if c[j] == "\\", j + 1 < c.count {
                        j += 1
                        switch c[j] {
                        case "n": value += "\n"
                        case "t": value += "\t"
                        case "r": value += "\r"
                        case "\\": value += "\\"
                        case "'": value += "'"
                        case "\"": value += "\""
                        default: value += "\\" + String(c[j])
                        }
                    } else {
                        value.append(c[j])
                    }
                    j += 1
                }
                guard j < c.count else { throw MLXEdgeError.template("unterminated string in \(s)") }
                out.append(.string(value))
                i = j + 1
            } else {
                let two = i + 1 < c.count ? String(c[i...i + 1]) : ""
                if ["//", "**", "==", "!=", "<=", ">="].contains(two) {
                    out.append(.op(two)); i += 2
                } else if "()[]{},.:|~+-*/%=<>".contains(ch) {
                    out.append(.op(String(ch))); i += 1
                } else {
                    throw MLXEdgeError.template("unexpected character \(ch) in \(s)")
                }
            }
        }
        return out
    }
}
