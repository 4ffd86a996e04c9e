import Foundation
import Testing
@testable import MLXEdge

/// Goldens of a tiny bundle, computed by mlx-lm in float32 on the same weights.
struct TinyGolden: Decodable {
    let tokens: [Int]
    let prefill: Int
    let vocabSize: Int
    let greedy: [Int]

    enum CodingKeys: String, CodingKey {
        case tokens, prefill, greedy
        case vocabSize = "vocab_size"
    }
}

let tinyBundles: [String] = subdirectories(tinyRoot)

func tinyDir(_ name: String) -> URL { tinyRoot.appendingPathComponent(name) }

func goldenLogits(_ dir: URL) throws -> [Float] {
    let data = try Data(contentsOf: dir.appendingPathComponent("golden_logits.f32"))
    return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
}

/// Largest |a - b| relative to the largest |b| (logits of these models are O(1..10)).
func relativeError(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> Float {
    let scale = max(b.map(abs).max() ?? 0, 1)
    return zip(a, b).map { abs($0 - $1) }.max()! / scale
}

@Suite struct ModelTests {
    @Test func fixturesExist() {
        #expect(tinyBundles.count >= 10, "run scripts/make_swift_fixtures.py")
    }

    @Test(arguments: tinyBundles)
    func logitsMatchMLXLM(name: String) throws {
        let dir = tinyDir(name)
        let golden = try loadJSON(TinyGolden.self, dir.appendingPathComponent("golden.json"))
        let expected = try goldenLogits(dir)
        let model = try loadModel(try ModelBundle.load(directory: dir))
        let V = golden.vocabSize
        #expect(model.vocabularySize == V)

        // The whole sequence in one call (batched prefill).
        let logits = try model.forward(golden.tokens, cache: model.makeCache())
        #expect(logits.count == expected.count)
        let err = relativeError(logits[...], expected[...])
        #expect(err < 1e-5, "\(name): full-sequence logits differ from mlx-lm by \(err)")

        // Prefill a prefix, then one token at a time through the KV cache.
        let cache = model.makeCache()
        let pre = golden.prefill
        let first = try model.forward(Array(golden.tokens[..<pre]), cache: cache)
        #expect(relativeError(first[...], expected[..<(pre * V)]) < 1e-5, "\(name): prefill")
        for t in pre..<golden.tokens.count {
            let step = try model.forward([golden.tokens[t]], cache: cache)
            let e = relativeError(step[...], expected[(t * V)..<((t + 1) * V)])
            #expect(e < 1e-5, "\(name): decode step at position \(t) differs by \(e)")
        }
        #expect(cache.offset == golden.tokens.count)
    }
}
