import Foundation
import Testing
@testable import MLXEdge

// Bundles must load in mlx-swift-lm on Apple Silicon. mlx-swift-lm cannot be built on Linux, so
// this decodes our config.json with a Codable mirror of its schema as of mlx-swift-lm 3.31.4,
// Libraries/MLXLMCommon/BaseConfiguration.swift (`BaseConfiguration`, its `Quantization`
// with required integer `group_size`/`bits` and optional `mode`, and `QuantizationContainer`, which
// reads every other key of "quantization" as a per-layer entry: `false` = skip, an object = a
// `Quantization`). Format drift on our side fails here.

/// Mirror of mlx-swift-lm 3.31.4 `BaseConfiguration` (the parts a loader reads).
struct MLXSwiftLMBaseConfiguration: Decodable {
    struct Quantization: Decodable, Equatable {
        let groupSize: Int
        let bits: Int
        let mode: String?
        enum CodingKeys: String, CodingKey { case groupSize = "group_size", bits, mode }
    }
    enum Option: Equatable { case skip, quantize(Quantization) }

    struct QuantizationContainer: Decodable {
        let quantization: Quantization
        var perLayer: [String: Option] = [:]

        struct Key: CodingKey {
            let stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        init(from decoder: Decoder) throws {
            quantization = try Quantization(from: decoder)
            let c = try decoder.container(keyedBy: Key.self)
            for key in c.allKeys {
                switch key.stringValue {
                case "group_size", "bits", "mode", "quant_method", "linear_class", "quantization_mode": continue
                default:
                    if let flag = try? c.decode(Bool.self, forKey: key) {
                        if !flag { perLayer[key.stringValue] = .skip }
                    } else {
                        perLayer[key.stringValue] = .quantize(try c.decode(Quantization.self, forKey: key))
                    }
                }
            }
        }

        /// `PerLayerQuantization.quantization(layer:)`
        func quantization(layer: String) -> Quantization? {
            switch perLayer[layer] {
            case .skip?: return nil
            case .quantize(let q)?: return q
            case nil: return quantization
            }
        }
    }

    enum IntOrIntArray: Decodable {
        case int(Int), ints([Int])
        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let i = try? c.decode(Int.self) { self = .int(i) } else { self = .ints(try c.decode([Int].self)) }
        }
    }

    let modelType: String
    let quantization: QuantizationContainer?
    let eosTokenIds: IntOrIntArray?

    enum CodingKeys: String, CodingKey {
        case modelType = "model_type"
        case quantization
        case eosTokenIds = "eos_token_id"
    }
}

/// model_type values registered in mlx-swift-lm 3.31.4 Libraries/MLXLLM/LLMModelFactory.swift for our families.
let mlxSwiftLMTypes: Set<String> = ["llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3"]

let bundlesToCheck: [URL] = tinyBundles.map(tinyDir)
    + ["smollm2", "gemma3"].map { generated.appendingPathComponent($0) }.filter { exists($0.appendingPathComponent("config.json")) }

@Suite struct MLXSwiftLMSchemaTests {
    @Test(arguments: bundlesToCheck)
    func configDecodesWithMLXSwiftLMSchema(dir: URL) throws {
        let data = try Data(contentsOf: dir.appendingPathComponent("config.json"))
        let theirs = try JSONDecoder().decode(MLXSwiftLMBaseConfiguration.self, from: data)
        #expect(mlxSwiftLMTypes.contains(theirs.modelType))
        let bundle = try ModelBundle.load(directory: dir)

        // Every quantized module (one with .scales) gets the same bits/group size in both readers;
        // every float matrix is skipped or never quantized.
        let quantizedModules = bundle.weights.keys.filter { $0.hasSuffix(".scales") }.map { String($0.dropLast(7)) }
        if quantizedModules.isEmpty { return }
        let container = try #require(theirs.quantization, "quantized bundle without a quantization entry")
        let ours = try #require(bundle.config.quantization)
        for module in quantizedModules {
            let q = try #require(container.quantization(layer: module), "\(module): mlx-swift-lm would not quantize it")
            let spec = try #require(ours.spec(for: module))
            #expect(q.bits == spec.bits && q.groupSize == spec.groupSize, "\(module)")
            #expect((q.mode ?? "affine") == "affine")
        }
        // Explicit integers in the file: "group_size": 64, never 64.0.
        guard case .object(let cfg) = try Value.parseJSON(String(decoding: data, as: UTF8.self)),
              case .object(let qobj)? = cfg["quantization"] else { return }
        for key in qobj.keys {
            switch qobj[key]! {
            case .int, .bool: continue
            case .object(let entry):
                for k in ["group_size", "bits"] {
                    guard case .int? = entry[k] else { Issue.record("\(key).\(k) is not an integer"); continue }
                }
            case .string where key == "mode": continue
            default: Issue.record("quantization.\(key) has an unexpected value")
            }
        }
    }
}
