import Foundation
import Testing
@testable import MLXEdge

/// A scratch copy of a tiny bundle that a test may damage.
func scratchCopy(_ name: String) throws -> URL {
    let dst = FileManager.default.temporaryDirectory.appendingPathComponent("mlxedge-\(name)-\(UUID().uuidString)")
    try FileManager.default.copyItem(at: tinyDir(name), to: dst)
    return dst
}

/// Write `tensors` (name -> (dtype, shape, bytes)) as a safetensors file, 8-byte aligned header.
func writeSafeTensors(_ url: URL, _ tensors: [(String, String, [Int], Data)]) throws {
    var header: [String: Any] = ["__metadata__": ["format": "mlx"]]
    var offset = 0
    for (name, dtype, shape, data) in tensors {
        header[name] = ["dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.count]]
        offset += data.count
    }
    var json = try JSONSerialization.data(withJSONObject: header)
    json.append(contentsOf: [UInt8](repeating: 0x20, count: (8 - json.count % 8) % 8))
    var out = Data()
    withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
    out.append(json)
    for (_, _, _, data) in tensors { out.append(data) }
    try out.write(to: url)
}

@Suite struct BundleTests {
    @Test func loadsConfigWeightsAndMetadata() throws {
        let b = try ModelBundle.load(directory: tinyDir("llama_mixed"))
        #expect(b.config.modelType == "llama")
        #expect(b.mlxedgeInfo?["parameters"]?.int != nil)
        #expect(b.chatTemplate?.contains("<|im_start|>") == true)
        #expect(b.eosTokenIds.contains(258))
        let q = try #require(b.config.quantization)
        #expect(q.base == QuantizationSpec(groupSize: 32, bits: 4))
        #expect(q.spec(for: "model.layers.1.mlp.down_proj") == QuantizationSpec(groupSize: 32, bits: 6))
        // mlx-lm leaves float modules out of "quantization": no .scales means float.
        #expect(b.weights["model.layers.0.self_attn.o_proj.weight"]?.dtype == .f16)
        #expect(b.weights["model.layers.0.self_attn.o_proj.scales"] == nil)
    }

    @Test func quantizationEntriesDecode() throws {
        let json = #"{"group_size": 64, "bits": 4, "mode": "affine", "lm_head": false, "model.embed_tokens": true,"# +
            #" "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 8, "mode": "affine"}}"#
        let q = try JSONDecoder().decode(QuantizationConfig.self, from: Data(json.utf8))
        #expect(q.base == QuantizationSpec(groupSize: 64, bits: 4))
        #expect(q.spec(for: "lm_head") == nil)
        #expect(q.spec(for: "model.embed_tokens") == q.base)
        #expect(q.spec(for: "model.layers.0.mlp.down_proj") == QuantizationSpec(groupSize: 32, bits: 8))
        #expect(q.spec(for: "model.layers.3.mlp.up_proj") == q.base)
        // Round trip keeps the per-module entries, `false` included.
        let again = try JSONDecoder().decode(QuantizationConfig.self, from: JSONEncoder().encode(q))
        #expect(again == q)
    }

    @Test func shardedBundleGivesTheSameLogits() throws {
        let dir = try scratchCopy("qwen2_q4")
        defer { try? FileManager.default.removeItem(at: dir) }
        let single = try ModelBundle.load(directory: dir)
        // Split the tensors over two shards listed in model.safetensors.index.json.
        let names = single.weights.keys.sorted()
        var map: [String: String] = [:]
        for (part, slice) in [names[..<(names.count / 2)], names[(names.count / 2)...]].enumerated() {
            let file = "model-0000\(part + 1)-of-00002.safetensors"
            try writeSafeTensors(dir.appendingPathComponent(file), slice.map { n in
                let t = single.weights[n]!
                map[n] = file
                return (n, t.dtype.rawValue, t.shape, Data(bytes: t.data, count: t.count * t.dtype.size))
            })
        }
        try FileManager.default.removeItem(at: dir.appendingPathComponent("model.safetensors"))
        try JSONSerialization.data(withJSONObject: ["metadata": [:], "weight_map": map])
            .write(to: dir.appendingPathComponent("model.safetensors.index.json"))
        let sharded = try ModelBundle.load(directory: dir)
        #expect(Set(sharded.weights.keys) == Set(names))
        let tokens = [256, 72, 101, 108, 108, 111]
        let a = try loadModel(single).forward(tokens, cache: loadModel(single).makeCache())
        let m = try loadModel(sharded)
        #expect(try m.forward(tokens, cache: m.makeCache()) == a)
    }

    @Test func brokenBundlesThrowClearErrors() throws {
        func expectError(_ name: String, _ damage: (URL) throws -> Void, _ check: (MLXEdgeError) -> Bool) throws {
            let dir = try scratchCopy(name)
            defer { try? FileManager.default.removeItem(at: dir) }
            try damage(dir)
            do {
                _ = try loadModel(try ModelBundle.load(directory: dir))
                Issue.record("\(name): loading a damaged bundle succeeded")
            } catch let e as MLXEdgeError {
                #expect(check(e), "unexpected error: \(e)")
                #expect(!e.description.contains("\n"))
            }
        }
        let st = "model.safetensors"
        // Missing files.
        try expectError("llama_q4_bf16", { try FileManager.default.removeItem(at: $0.appendingPathComponent("config.json")) }) {
            if case .missingFile(let p) = $0 { return p.hasSuffix("config.json") }; return false
        }
        try expectError("llama_q4_bf16", { try FileManager.default.removeItem(at: $0.appendingPathComponent(st)) }) {
            if case .missingFile = $0 { return true }; return false
        }
        // Truncated weights.
        try expectError("llama_q4_bf16", { dir in
            let url = dir.appendingPathComponent(st)
            let data = try Data(contentsOf: url)
            try data.prefix(data.count - 1000).write(to: url)
        }) { if case .corruptFile(_, let reason) = $0 { return reason.contains("data_offsets") }; return false }
        // Garbage header length.
        try expectError("llama_q4_bf16", { dir in
            try Data([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0] + [UInt8](repeating: 0, count: 64)).write(to: dir.appendingPathComponent(st))
        }) { if case .corruptFile(_, let reason) = $0 { return reason.contains("header length") }; return false }
        // Unsupported dtype.
        try expectError("llama_f32", { dir in
            try writeSafeTensors(dir.appendingPathComponent(st), [("model.norm.weight", "I64", [2], Data(count: 16))])
        }) { if case .unsupported(let what) = $0 { return what.contains("I64") }; return false }
        // config.json without a required key, and an unknown architecture.
        try expectError("llama_f32", { dir in
            let url = dir.appendingPathComponent("config.json")
            var cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
            cfg.removeValue(forKey: "hidden_size")
            try JSONSerialization.data(withJSONObject: cfg).write(to: url)
        }) { if case .corruptFile(_, let reason) = $0 { return reason.contains("hidden_size") }; return false }
        try expectError("llama_f32", { dir in
            let url = dir.appendingPathComponent("config.json")
            var cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
            cfg["model_type"] = "mamba"
            try JSONSerialization.data(withJSONObject: cfg).write(to: url)
        }) { if case .unsupported(let what) = $0 { return what.contains("mamba") }; return false }
        // A wrong shape, a missing tensor, a leftover tensor, unsupported quantization bits.
        try expectError("llama_f32", { dir in
            let b = try ModelBundle.load(directory: dir)
            try writeSafeTensors(dir.appendingPathComponent(st), b.weights.map { n, t in
                (n, t.dtype.rawValue, n == "model.norm.weight" ? [t.count / 2] : t.shape,
                 Data(bytes: t.data, count: (n == "model.norm.weight" ? t.count / 2 : t.count) * t.dtype.size))
            })
        }) { if case .badTensor(let what) = $0 { return what.contains("model.norm.weight") }; return false }
        try expectError("llama_f32", { dir in
            let b = try ModelBundle.load(directory: dir)
            try writeSafeTensors(dir.appendingPathComponent(st), b.weights.filter { $0.key != "lm_head.weight" }.map { n, t in
                (n, t.dtype.rawValue, t.shape, Data(bytes: t.data, count: t.count * t.dtype.size))
            })
        }) { if case .badTensor(let what) = $0 { return what.contains("lm_head.weight is missing") }; return false }
        try expectError("llama_f32", { dir in
            let b = try ModelBundle.load(directory: dir)
            try writeSafeTensors(dir.appendingPathComponent(st), b.weights.map { n, t in
                (n, t.dtype.rawValue, t.shape, Data(bytes: t.data, count: t.count * t.dtype.size))
            } + [("model.layers.0.extra.weight", "F32", [1], Data(count: 4))])
        }) { if case .badTensor(let what) = $0 { return what.contains("model.layers.0.extra.weight") }; return false }
        try expectError("llama_q4_bf16", { dir in
            let url = dir.appendingPathComponent("config.json")
            var cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
            cfg["quantization"] = ["group_size": 32, "bits": 7]
            try JSONSerialization.data(withJSONObject: cfg).write(to: url)
        }) { if case .unsupported(let what) = $0 { return what.contains("7-bit") }; return false }
    }
}
