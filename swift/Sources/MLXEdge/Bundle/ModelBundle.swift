import Foundation

/// A model directory as mlxedge's converter (or mlx-lm) writes it: config.json, safetensors
/// shards (memory-mapped, never copied), tokenizer files and our mlxedge.json.
public struct ModelBundle: Sendable {
    public let directory: URL
    public let config: ModelConfiguration
    public let weights: [String: Tensor]
    /// `mlxedge.json` (provenance written by the converter); nil for plain mlx-lm bundles.
    public let mlxedgeInfo: JSONValue?
    public let tokenizerConfig: JSONValue?
    public let generationConfig: JSONValue?

    /// Load `directory`; throws `MLXEdgeError` naming the file and the problem.
    public static func load(directory: URL) throws -> ModelBundle {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory.path, isDirectory: &isDir), isDir.boolValue else {
            throw MLXEdgeError.missingFile("\(directory.path) (not a directory)")
        }
        let config = try decodeJSON(ModelConfiguration.self, directory.appendingPathComponent("config.json"))
        let weights = try loadWeights(directory)
        return ModelBundle(
            directory: directory, config: config, weights: weights,
            mlxedgeInfo: try decodeJSONIfPresent(JSONValue.self, directory.appendingPathComponent("mlxedge.json")),
            tokenizerConfig: try decodeJSONIfPresent(JSONValue.self, directory.appendingPathComponent("tokenizer_config.json")),
            generationConfig: try decodeJSONIfPresent(JSONValue.self, directory.appendingPathComponent("generation_config.json")))
    }

    /// The chat template: `chat_template.jinja` if present, else tokenizer_config.json's `chat_template`
    /// (a string, or a list of named templates of which "default" is used).
    public var chatTemplate: String? {
        let file = directory.appendingPathComponent("chat_template.jinja")
        if let s = try? String(contentsOf: file, encoding: .utf8) { return s }
        switch tokenizerConfig?["chat_template"] {
        case .string(let s)?: return s
        case .array(let list)?:
            let named = list.compactMap { t -> (String, String)? in
                guard let n = t["name"]?.string, let s = t["template"]?.string else { return nil }
                return (n, s)
            }
            return named.first { $0.0 == "default" }?.1 ?? named.first?.1
        default: return nil
        }
    }

    /// End-of-sequence ids from config.json and generation_config.json (mlx-lm reads both).
    public var eosTokenIds: Set<Int> {
        var ids = Set(config.eosTokenIds)
        if let g = generationConfig?["eos_token_id"] {
            if let i = g.int { ids.insert(i) }
            g.array?.compactMap(\.int).forEach { ids.insert($0) }
        }
        return ids
    }

    static func loadWeights(_ directory: URL) throws -> [String: Tensor] {
        let index = directory.appendingPathComponent("model.safetensors.index.json")
        var files: [String]
        if FileManager.default.fileExists(atPath: index.path) {
            let obj = try decodeJSON(JSONValue.self, index)
            guard let map = obj["weight_map"]?.object else {
                throw MLXEdgeError.corruptFile(index.lastPathComponent, reason: "no weight_map")
            }
            files = Array(Set(map.values.compactMap(\.string))).sorted()
            for f in files where !FileManager.default.fileExists(atPath: directory.appendingPathComponent(f).path) {
                throw MLXEdgeError.missingFile("\(directory.appendingPathComponent(f).path) (listed in model.safetensors.index.json)")
            }
            var weights: [String: Tensor] = [:]
            for f in files { weights.merge(try readSafeTensors(path: directory.appendingPathComponent(f).path)) { a, _ in a } }
            for (name, f) in map where weights[name] == nil {
                throw MLXEdgeError.badTensor("\(name) is listed in model.safetensors.index.json for \(f.string ?? "?") but is not in that file")
            }
            return weights
        }
        let contents = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        files = contents.filter { $0.hasPrefix("model") && $0.hasSuffix(".safetensors") }.sorted()
        guard !files.isEmpty else {
            throw MLXEdgeError.missingFile("\(directory.appendingPathComponent("model.safetensors").path)")
        }
        var weights: [String: Tensor] = [:]
        for f in files { weights.merge(try readSafeTensors(path: directory.appendingPathComponent(f).path)) { a, _ in a } }
        return weights
    }
}

func decodeJSON<T: Decodable>(_ type: T.Type, _ url: URL) throws -> T {
    guard let data = FileManager.default.contents(atPath: url.path) else {
        throw MLXEdgeError.missingFile(url.path)
    }
    do {
        return try JSONDecoder().decode(T.self, from: data)
    } catch let e as DecodingError {
        throw MLXEdgeError.corruptFile(url.lastPathComponent, reason: describe(e))
    }
}

func decodeJSONIfPresent<T: Decodable>(_ type: T.Type, _ url: URL) throws -> T? {
    FileManager.default.fileExists(atPath: url.path) ? try decodeJSON(type, url) : nil
}

/// One line for a DecodingError: which key, what was wrong.
func describe(_ e: DecodingError) -> String {
    func path(_ c: [CodingKey]) -> String { c.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".") }
    switch e {
    case .keyNotFound(let k, let ctx): return "missing key \"\(path(ctx.codingPath + [k]))\""
    case .typeMismatch(let t, let ctx): return "\"\(path(ctx.codingPath))\" is not a \(t)"
    case .valueNotFound(let t, let ctx): return "\"\(path(ctx.codingPath))\" is null, expected \(t)"
    case .dataCorrupted(let ctx):
        return ctx.codingPath.isEmpty ? "not valid JSON" : "\"\(path(ctx.codingPath))\": \(ctx.debugDescription)"
    @unknown default: return "\(e)"
    }
}
