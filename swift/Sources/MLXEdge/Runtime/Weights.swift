import Foundation

/// Bundle tensors -> `Linear` layers and small Float vectors, checking names, shapes and dtypes
/// (port of mlxedge/backends/numpy/weights.py, minus the dequantization: matrices stay in place).
///
/// A module `p` is quantized when the bundle has `p.scales`; its bits and group size come from
/// `config.quantization` (per-module override or the default). Every tensor must be used by the
/// architecture: `checkAllUsed()` fails on leftovers, as mlx-lm's strict loading does.
final class Weights {
    let tensors: [String: Tensor]
    let quantization: QuantizationConfig?
    private(set) var used: Set<String> = []

    init(_ bundle: ModelBundle) {
        tensors = bundle.weights
        quantization = bundle.config.quantization
    }

    func has(_ name: String) -> Bool { tensors[name] != nil }

    func markUsed(where predicate: (String) -> Bool) { used.formUnion(tensors.keys.filter(predicate)) }

    private func tensor(_ name: String) throws -> Tensor {
        guard let t = tensors[name] else { throw MLXEdgeError.badTensor("\(name) is missing from the bundle") }
        used.insert(name)
        return t
    }

    /// A 1-D float vector (norm weights, biases), converted to Float.
    func vector(_ name: String, count: Int) throws -> [Float] {
        let t = try tensor(name)
        guard t.shape == [count], t.dtype != .u32 else {
            throw MLXEdgeError.badTensor("\(name) is \(t.dtype.rawValue) \(t.shape), expected a float vector of \(count)")
        }
        return t.floats()
    }

    /// The linear layer `prefix` (prefix.weight, optional prefix.bias / .scales / .biases) of shape (out, in).
    func linear(_ prefix: String, in inFeatures: Int, out outFeatures: Int, bias: Bool? = nil) throws -> Linear {
        let w = try tensor("\(prefix).weight")
        let storage: MatrixStorage
        if has("\(prefix).scales") {
            guard let spec = quantization?.spec(for: prefix) ?? quantization?.base else {
                throw MLXEdgeError.badTensor("\(prefix) has scales but config.json has no quantization entry for it")
            }
            let (bits, gs) = (spec.bits, spec.groupSize)
            guard spec.mode == "affine" else { throw MLXEdgeError.unsupported("\(prefix): quantization mode \(spec.mode)") }
            guard [2, 3, 4, 5, 6, 8].contains(bits) else { throw MLXEdgeError.unsupported("\(prefix): \(bits)-bit quantization") }
            guard gs > 0, gs % 32 == 0, inFeatures % gs == 0 else {
                throw MLXEdgeError.unsupported("\(prefix): group size \(gs) for \(inFeatures) inputs")
            }
            let s = try tensor("\(prefix).scales"), b = try tensor("\(prefix).biases")
            let groups = inFeatures / gs
            guard w.dtype == .u32, w.shape == [outFeatures, inFeatures * bits / 32] else {
                throw MLXEdgeError.badTensor("\(prefix).weight is \(w.dtype.rawValue) \(w.shape), expected U32 [\(outFeatures), \(inFeatures * bits / 32)] for \(bits)-bit weights")
            }
            for t in [s, b] where t.shape != [outFeatures, groups] || t.dtype == .u32 {
                throw MLXEdgeError.badTensor("\(t.name) is \(t.dtype.rawValue) \(t.shape), expected float [\(outFeatures), \(groups)] (group size \(gs))")
            }
            guard s.dtype == b.dtype else { throw MLXEdgeError.badTensor("\(prefix): scales and biases differ in dtype") }
            storage = .affine(weight: w, scales: s, biases: b, bits: bits, groupSize: gs)
        } else {
            guard w.dtype != .u32 else {
                throw MLXEdgeError.badTensor("\(prefix).weight is U32 (packed) but \(prefix).scales is missing")
            }
            guard w.shape == [outFeatures, inFeatures] else {
                throw MLXEdgeError.badTensor("\(prefix).weight is \(w.shape), expected [\(outFeatures), \(inFeatures)]")
            }
            storage = .float(w)
        }
        var b: [Float]? = nil
        if bias ?? has("\(prefix).bias") { b = try vector("\(prefix).bias", count: outFeatures) }
        return Linear(storage: storage, inFeatures: inFeatures, outFeatures: outFeatures, bias: b)
    }

    func checkAllUsed() throws {
        let left = Set(tensors.keys).subtracting(used).sorted()
        guard left.isEmpty else {
            let shown = left.prefix(5).joined(separator: ", ")
            throw MLXEdgeError.badTensor("\(left.count) tensors are not used by this architecture: \(shown)\(left.count > 5 ? ", ..." : "")")
        }
    }
}
