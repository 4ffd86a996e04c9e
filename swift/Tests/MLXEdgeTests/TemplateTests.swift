import Foundation
import Testing
@testable import MLXEdge

/// Renderings by transformers' jinja2 setup of real chat templates (scripts/make_swift_fixtures.py).
struct TemplateCase: CustomTestStringConvertible, Sendable {
    let template: String
    let conversation: String
    let context: [String: Value]
    let output: String?
    let error: String?
    var testDescription: String { "\(template)/\(conversation)" }
}

let templateDir = fixtures.appendingPathComponent("templates")

func templateSources() throws -> [String: String] {
    guard case .object(let o) = try Value.parseJSON(String(contentsOf: templateDir.appendingPathComponent("templates.json"), encoding: .utf8)) else { return [:] }
    return Dictionary(uniqueKeysWithValues: o.keys.map { ($0, o[$0]!.rendered) })
}

let templateCases: [TemplateCase] = {
    guard let text = try? String(contentsOf: templateDir.appendingPathComponent("cases.json"), encoding: .utf8),
          case .array(let list)? = try? Value.parseJSON(text) else { return [] }
    return list.compactMap { item -> TemplateCase? in
        guard case .object(let o) = item, case .object(let ctx)? = o["context"] else { return nil }
        let output: String? = if case .string(let s)? = o["output"] { s } else { nil }
        let error: String? = if case .string(let s)? = o["error"] { s } else { nil }
        return TemplateCase(template: o["template"]!.rendered, conversation: o["conversation"]!.rendered,
                            context: Dictionary(uniqueKeysWithValues: ctx.keys.map { ($0, ctx[$0]!) }),
                            output: output, error: error)
    }
}()

@Suite struct TemplateTests {
    @Test func casesExist() { #expect(templateCases.count > 50, "run scripts/make_swift_fixtures.py") }

    @Test(arguments: templateCases)
    func rendersLikeJinja(_ c: TemplateCase) throws {
        let template = try ChatTemplate(try #require(try templateSources()[c.template]))
        if let expected = c.output {
            let out = try template.render(c.context)
            #expect(out == expected, "\(c.template)/\(c.conversation)\n--- swift\n\(out)\n--- jinja2\n\(expected)")
        } else {
            #expect(throws: MLXEdgeError.template(c.error ?? "")) { try template.render(c.context) }
        }
    }

    @Test func whitespaceControl() throws {
        let t = try ChatTemplate("a\n  {% if true %}\n    b\n  {% endif %}\nc {{- ' d ' -}} e\n{# note #}\nf\n")
        #expect(try t.render([:]) == "a\n    b\nc d e\nf")
    }

    @Test func expressions() throws {
        let t = try ChatTemplate("{{ [1, 2, 3][::-1] }} {{ 'a,b'.split(',') | join('+') }} {{ 7 // 2 }} {{ 2 ** 3 }} {{ 'x' ~ 1 }} {{ none }} {{ 1 if false }}|{{ {'k': [1.5, true]} | tojson }}")
        let out = try t.render([:])
        #expect(out == "[3, 2, 1] a+b 3 8 x1 None |{\"k\": [1.5, true]}", "\(out)")
    }
}
