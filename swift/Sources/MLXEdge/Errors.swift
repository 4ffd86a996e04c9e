import Foundation

/// Every problem a caller can fix (a corrupt or unsupported bundle, bad arguments) is one of these.
/// `description` is one line saying what is wrong, like the Python side's `MlxEdgeError`.
public enum MLXEdgeError: Error, CustomStringConvertible, Equatable {
    /// The directory is missing a file the bundle needs.
    case missingFile(String)
    /// A file exists but cannot be parsed (bad JSON, truncated safetensors...).
    case corruptFile(String, reason: String)
    /// The bundle is well formed but uses something this runtime does not implement.
    case unsupported(String)
    /// A tensor the architecture needs is absent or has the wrong shape or dtype.
    case badTensor(String)
    /// The tokenizer or chat template cannot handle the input.
    case tokenizer(String)
    case template(String)
    /// Bad user input (CLI arguments, generation parameters).
    case invalidArgument(String)

    public var description: String {
        switch self {
        case .missingFile(let path): return "missing file: \(path)"
        case .corruptFile(let path, let reason): return "\(path) is corrupt: \(reason)"
        case .unsupported(let what): return "unsupported: \(what)"
        case .badTensor(let what): return "bad tensor: \(what)"
        case .tokenizer(let what): return "tokenizer: \(what)"
        case .template(let what): return "chat template: \(what)"
        case .invalidArgument(let what): return what
        }
    }
}

extension MLXEdgeError: LocalizedError {
    public var errorDescription: String? { description }
}
