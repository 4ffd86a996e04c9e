import Foundation
import Testing
import MLXEdge

// Real models converted from their GGUFs by scripts/make_swift_fixtures.py (part "real") into
// swift/Generated, with mlx-lm's greedy tokens and log-probabilities. Opt-in (minutes in a debug
// build): CI runs `MLXEDGE_REAL_TESTS=1 swift test -c release -Xswiftc -enable-testing --filter RealModelTests`.

func logSumExp(_ x: [Double]) -> Double {
    let m = x.max()!
    return m + log(x.reduce(0.0) { $0 + exp($1 - m) })
}

struct RealGolden: Decodable {
    struct Prompt: Decodable {
        /// nil for base models without a chat template: `text` is then a raw completion prompt.
        let messages: [[String: String]]?
        let text: String
        let ids: [Int]
        let greedy: [Int]
    }
    let prompts: [Prompt]
    let klIds: [Int]
    let vocabSize: Int

    enum CodingKeys: String, CodingKey {
        case prompts
        case klIds = "kl_ids"
        case vocabSize = "vocab_size"
    }
}

let realModels = ["smollm2", "gemma3"].filter { exists(generated.appendingPathComponent("\($0)/golden.json")) }
let realEnabled = !realModels.isEmpty && ProcessInfo.processInfo.environment["MLXEDGE_REAL_TESTS"] == "1"

@Suite(.enabled(if: realEnabled, "set MLXEDGE_REAL_TESTS=1 (release build) after scripts/make_swift_fixtures.py"))
struct RealModelTests {
    @Test(arguments: realModels)
    func chatPromptsAndGreedyTokensMatchMLXLM(name: String) async throws {
        let dir = generated.appendingPathComponent(name)
        let golden = try loadJSON(RealGolden.self, dir.appendingPathComponent("golden.json"))
        let model = try await MLXEdgeModel.load(directory: dir)
        for p in golden.prompts {
            if let messages = p.messages {
                #expect(try model.applyChatTemplate(messages: messages) == p.text, "\(name): chat template")
            } else {
                #expect(model.chatTemplate == nil, "\(name): Python saw no chat template")
            }
            #expect(try model.encode(p.text) == p.ids, "\(name): prompt ids")
            var params = GenerateParameters(maxTokens: p.greedy.count)
            params.prefillStepSize = 512
            let ids = try await model.generate(tokens: p.ids, parameters: params) { _ in true }
            // mlx-lm's generate_step does not stop at EOS: compare up to where we stopped.
            #expect(Array(p.greedy.prefix(ids.count)) == ids, "\(name): greedy tokens for \(p.text.debugDescription)")
            #expect(ids.count == p.greedy.count || model.eosTokenIds.contains(p.greedy[ids.count]))
        }
    }

    /// Mean KL(mlx-lm || Swift) of the next-token distributions over a real text.
    @Test(arguments: realModels)
    func klDivergenceOnRealText(name: String) async throws {
        let dir = generated.appendingPathComponent(name)
        let golden = try loadJSON(RealGolden.self, dir.appendingPathComponent("golden.json"))
        let data = try Data(contentsOf: dir.appendingPathComponent("golden_logprobs.f32"))
        let reference = data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        let model = try await MLXEdgeModel.load(directory: dir)
        let logits = try model.model.forward(golden.klIds, cache: model.model.makeCache())
        let V = golden.vocabSize
        var total = 0.0
        for t in 0..<golden.klIds.count {
            // Both sides renormalized in Double: the float32 log-sum-exp of a 49k vocabulary is
            // itself off by ~1e-5, which would otherwise dominate the estimate.
            let row = logits[(t * V)..<((t + 1) * V)].map(Double.init)
            let ref = reference[(t * V)..<((t + 1) * V)].map(Double.init)
            let lse = logSumExp(row), refLse = logSumExp(ref)
            var kl = 0.0
            for v in 0..<V {
                let lp = ref[v] - refLse
                kl += exp(lp) * (lp - (row[v] - lse))
            }
            total += kl
        }
        let mean = total / Double(golden.klIds.count)
        print("\(name): mean KL(mlx-lm || swift) over \(golden.klIds.count) positions = \(mean)")
        #expect(mean < 0.01, "\(name): mean KL \(mean)")
    }
}
