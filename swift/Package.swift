// swift-tools-version:6.0
// MLXEdge: run mlxedge / mlx-lm bundles on the CPU, anywhere Swift runs (Linux included).
// No package dependencies. On Apple platforms Accelerate is used behind `#if canImport`.
import PackageDescription

let package = Package(
    name: "MLXEdge",
    platforms: [.macOS(.v13), .iOS(.v16), .visionOS(.v1)],
    products: [
        .library(name: "MLXEdge", targets: ["MLXEdge"]),
        .executable(name: "mlxedge-swift", targets: ["mlxedge-swift"]),
    ],
    targets: [
        .target(name: "MLXEdge"),
        .executableTarget(
            name: "mlxedge-swift",
            dependencies: ["MLXEdge"]
        ),
        .testTarget(
            name: "MLXEdgeTests",
            dependencies: ["MLXEdge"],
            exclude: ["Fixtures"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
