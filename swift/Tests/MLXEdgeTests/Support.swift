import Foundation
@testable import MLXEdge

/// Committed fixtures written by scripts/make_swift_fixtures.py.
let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
/// swift/ (this file is swift/Tests/MLXEdgeTests/Support.swift).
let swiftRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()
/// Tiny bundles with mlx-lm goldens, also written by the script and shared with pytest
/// (tests/test_tiny_goldens.py).
let tinyRoot = swiftRoot.deletingLastPathComponent().appendingPathComponent("tests/goldens/tiny")
/// Big generated fixtures (real-model bundles); absent unless the script was run with `real`.
let generated = swiftRoot.appendingPathComponent("Generated")

func exists(_ url: URL) -> Bool { FileManager.default.fileExists(atPath: url.path) }

func loadJSON<T: Decodable>(_ type: T.Type, _ url: URL) throws -> T {
    try JSONDecoder().decode(T.self, from: Data(contentsOf: url))
}

/// Sub-directories of `dir` (sorted), empty if `dir` is missing.
func subdirectories(_ dir: URL) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).filter {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: dir.appendingPathComponent($0).path, isDirectory: &isDir) && isDir.boolValue
    }.sorted()
}
