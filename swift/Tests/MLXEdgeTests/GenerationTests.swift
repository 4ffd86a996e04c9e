import Foundation
import Testing
@testable import MLXEdge

struct SamplingCase: Decodable {
    let params: [String: Double]
    let logits: [Float]
    let history: [Int]
    let penalized: [Float]
    let kept: [Int]

    var parameters: GenerateParameters {
        var p = GenerateParameters(temperature: Float(params["temp"] ?? 0), topP: Float(params["top_p"] ?? 1),
                                   topK: Int(params["top_k"] ?? 0), minP: Float(params["min_p"] ?? 0),
                                   repetitionPenalty: params["repetition_penalty"].map(Float.init), seed: 1)
        p.minTokensToKeep = Int(params["min_tokens_to_keep"] ?? 1)
        return p
    }
}

let samplingCases = (try? loadJSON([SamplingCase].self, fixtures.appendingPathComponent("sampling.json"))) ?? []

@Suite struct SamplingTests {
    @Test func casesExist() { #expect(samplingCases.count >= 5, "run scripts/make_swift_fixtures.py") }

    /// The tokens left after penalty + top-p + min-p + top-k are those mlx-lm keeps, and draws
    /// follow softmax(logprobs / temp) over them.
    @Test func filtersAndDrawsMatchMLXLM() {
        for c in samplingCases {
            let p = c.parameters
            var x = c.logits
            if let r = p.repetitionPenalty {
                for id in Set(c.history.suffix(p.repetitionContextSize)) { x[id] = x[id] < 0 ? x[id] * r : x[id] / r }
            }
            #expect(zip(x, c.penalized).allSatisfy { abs($0 - $1) < 1e-5 }, "penalty \(c.params)")
            var lp = logSoftmax(x)
            if p.topP > 0 && p.topP < 1 { applyTopP(&lp, p.topP) }
            if p.minP != 0 { applyMinP(&lp, p.minP, keep: p.minTokensToKeep) }
            if p.topK > 0 { applyTopK(&lp, p.topK) }
            let kept = lp.indices.filter { lp[$0] > -.infinity }
            #expect(kept == c.kept, "filters \(c.params)")

            var sampler = Sampler(p)
            var counts = [Int](repeating: 0, count: x.count)
            let draws = 8_000
            for _ in 0..<draws { counts[sampler.sample(c.logits, history: c.history)] += 1 }
            #expect(counts.indices.allSatisfy { c.kept.contains($0) || counts[$0] == 0 }, "drew a filtered token \(c.params)")
            let scaled = kept.map { lp[$0] / p.temperature }
            let m = scaled.max()!
            let z = scaled.map { expf($0 - m) }.reduce(0, +)
            for (k, id) in kept.enumerated() {
                let expected = expf(scaled[k] - m) / z
                #expect(abs(Float(counts[id]) / Float(draws) - expected) < 0.025, "frequency of \(id) in \(c.params)")
            }
        }
    }

    @Test func seedIsReproducibleAndGreedyIsArgmax() {
        let logits = (0..<100).map { Float(sin(Double($0))) }
        var a = Sampler(GenerateParameters(temperature: 1, seed: 42)), b = Sampler(GenerateParameters(temperature: 1, seed: 42))
        #expect((0..<50).map { _ in a.sample(logits, history: []) } == (0..<50).map { _ in b.sample(logits, history: []) })
        var g = Sampler(GenerateParameters(temperature: 0))
        #expect(g.sample(logits, history: []) == argmax(logits))
        var k1 = Sampler(GenerateParameters(temperature: 2, topK: 1, seed: 3))
        #expect(k1.sample(logits, history: []) == argmax(logits))
    }

    @Test func stopStringsCutAcrossPieces() {
        var s = StopMatcher(["</answer>", "STOP"])
        var out = ""
        for piece in ["The ans", "wer is 4</an", "swer> and more"] { out += s.add(piece) }
        out += s.finish()
        #expect(out == "The answer is 4")
        #expect(s.stopped)
        var t = StopMatcher(["xyz"])
        #expect(t.add("abcx") == "abc")
        #expect(t.add("q") == "xq")
        #expect(t.finish() == "")
    }
}

@Suite struct GenerationTests {
    /// Greedy tokens through prefill + cached decoding equal mlx-lm's generate_step.
    @Test(arguments: tinyBundles)
    func greedyMatchesMLXLM(name: String) throws {
        let dir = tinyDir(name)
        let golden = try loadJSON(TinyGolden.self, dir.appendingPathComponent("golden.json"))
        let model = try MLXEdgeModel(bundle: try ModelBundle.load(directory: dir))
        let params = GenerateParameters(maxTokens: golden.greedy.count)
        let (ids, info) = try generateLoop(model: model.model, tokenizer: model.tokenizer, eos: [], tokens: golden.tokens,
                                           history: [], cache: model.model.makeCache(), parameters: params) { _ in true }
        #expect(ids == golden.greedy, "\(name)")
        #expect(info.generatedTokens == golden.greedy.count)
    }

    /// A second chat turn reuses the cache and still produces what a fresh run of the whole
    /// conversation produces.
    @Test func chatSessionReusesCacheCorrectly() async throws {
        let model = try await MLXEdgeModel.load(directory: tinyDir("qwen2_q4"))
        let params = GenerateParameters(maxTokens: 12)
        let session = ChatSession(model, instructions: "Be brief.", parameters: params)
        let first = try await session.respond(to: "Hello there")
        let second = try await session.respond(to: "And again?")
        let messages: [[String: String]] = [
            ["role": "system", "content": "Be brief."], ["role": "user", "content": "Hello there"],
            ["role": "assistant", "content": first], ["role": "user", "content": "And again?"],
        ]
        let fresh = try await model.generate(prompt: try model.applyChatTemplate(messages: messages), parameters: params)
        #expect(second == fresh)
        #expect(await session.messages.count == 5)
        let info = await session.lastInfo
        #expect(info.promptTokens < (try model.encode(try model.applyChatTemplate(messages: messages))).count,
                "the second turn should only run the new tokens")
    }

    @Test func streamYieldsTheSameTextAsGenerate() async throws {
        let model = try await MLXEdgeModel.load(directory: tinyDir("llama_q4_bf16"))
        let params = GenerateParameters(maxTokens: 10, temperature: 0.8, seed: 5)
        var streamed = ""
        for try await piece in model.stream(prompt: "abc", parameters: params) { streamed += piece }
        let whole = try await model.generate(prompt: "abc", parameters: params)
        #expect(streamed == whole)
    }
}
