import Foundation

// Building blocks shared by the architectures: norms, activations, RoPE, attention.
// Port of mlxedge/backends/numpy/layers.py. Activations are row-major (T, features) Float arrays
// for one sequence; everything computes in float32, as mlx-lm does for float32 weights.

/// x / sqrt(mean(x^2) + eps) * weight over each row of `weight.count` features (mx.fast.rms_norm).
func rmsNorm(_ x: [Float], _ weight: [Float], eps: Float) -> [Float] {
    let n = weight.count
    var out = [Float](repeating: 0, count: x.count)
    x.withUnsafeBufferPointer { xp in
        out.withUnsafeMutableBufferPointer { op in
            for r in 0..<(x.count / n) {
                let row = xp.baseAddress! + r * n
                let ms = dot(row, row, n) / Float(n)
                let inv = 1 / (ms + eps).squareRoot()
                for i in 0..<n { op[r * n + i] = row[i] * inv * weight[i] }
            }
        }
    }
    return out
}

@inline(__always) func silu(_ x: Float) -> Float { x / (1 + expf(-x)) }

/// The tanh approximation of GELU (mlx.nn.gelu_approx, Gemma's gelu_pytorch_tanh).
@inline(__always) func geluApprox(_ x: Float) -> Float {
    0.5 * x * (1 + tanhf(0.7978845608028654 * (x + 0.044715 * x * x * x)))
}

/// act(gate) * up, elementwise.
func gated(_ gate: [Float], _ up: [Float], _ act: (Float) -> Float) -> [Float] {
    var out = [Float](repeating: 0, count: gate.count)
    for i in 0..<gate.count { out[i] = act(gate[i]) * up[i] }
    return out
}

func add(_ a: [Float], _ b: [Float]) -> [Float] {
    var out = a
    for i in 0..<out.count { out[i] += b[i] }
    return out
}

/// Columns [from, to) of a (T, n) matrix: splits fused projections (qkv, gate_up).
func columns(_ x: [Float], rows T: Int, width n: Int, _ from: Int, _ to: Int) -> [Float] {
    var out = [Float]()
    out.reserveCapacity(T * (to - from))
    for t in 0..<T { out += x[(t * n + from)..<(t * n + to)] }
    return out
}

// MARK: - rotary position embedding

/// Rotary embedding on the first `dims` features of each head (the rest pass through).
/// Position p rotates pair i by p * invFreq[i]; non-traditional pairs feature i with i + dims/2
/// (mlx's default), traditional pairs 2i and 2i+1.
struct Rope: Sendable {
    let dims: Int
    let invFreq: [Double]
    var traditional = false
    /// longrope multiplies the rotated features first.
    var inputScale: Float = 1

    /// Rotate x (T, heads, headDim) in place for positions start..<start+T.
    func apply(_ x: inout [Float], T: Int, heads: Int, headDim: Int, start: Int) {
        let half = dims / 2
        var cos = [Float](repeating: 0, count: half), sin = cos
        for t in 0..<T {
            let pos = Double(start + t)
            for i in 0..<half {
                let a = pos * invFreq[i]
                cos[i] = Float(Foundation.cos(a)); sin[i] = Float(Foundation.sin(a))
            }
            for h in 0..<heads {
                let base = (t * heads + h) * headDim
                if inputScale != 1 { for i in 0..<dims { x[base + i] *= inputScale } }
                for i in 0..<half {
                    let (j1, j2) = traditional ? (base + 2 * i, base + 2 * i + 1) : (base + i, base + i + half)
                    let (x1, x2) = (x[j1], x[j2])
                    x[j1] = x1 * cos[i] - x2 * sin[i]
                    x[j2] = x1 * sin[i] + x2 * cos[i]
                }
            }
        }
    }
}

/// The rotary embedding mlx-lm's `initialize_rope` builds (rope_utils.py): default, linear,
/// llama3 and longrope/su scaling.
func makeRope(dims: Int, base: Double, traditional: Bool = false, scaling: [String: JSONValue]? = nil,
              maxPositionEmbeddings: Int? = nil) throws -> Rope {
    let exponents = stride(from: 0, to: dims, by: 2).map { Double($0) / Double(dims) }
    let kind = scaling?["type"]?.string ?? scaling?["rope_type"]?.string ?? "default"
    func factor() throws -> Double {
        guard let f = scaling?["factor"]?.double else { throw MLXEdgeError.unsupported("rope_scaling \(kind) without factor") }
        return f
    }
    switch kind {
    case "default":
        return Rope(dims: dims, invFreq: exponents.map { pow(base, -$0) }, traditional: traditional)
    case "linear":
        let f = try factor()
        return Rope(dims: dims, invFreq: exponents.map { pow(base, -$0) / f }, traditional: traditional)
    case "llama3":
        let f = try factor()
        let low = scaling?["low_freq_factor"]?.double ?? 1, high = scaling?["high_freq_factor"]?.double ?? 4
        let oldLen = scaling?["original_max_position_embeddings"]?.double ?? 8192
        // Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
        let inv = exponents.map { e -> Double in
            var period = pow(base, e)
            let wavelen = 2 * Double.pi * period
            if wavelen > oldLen / low { period *= f }
            if wavelen > oldLen / high && wavelen < oldLen / low {
                let smooth = (oldLen / wavelen - low) / (high - low)
                period = period / ((1 - smooth) / f + smooth)
            }
            return 1 / period
        }
        return Rope(dims: dims, invFreq: inv, traditional: traditional)
    case "longrope", "su":
        guard let long = scaling?["long_factor"]?.array?.compactMap(\.double), long.count == dims / 2 else {
            throw MLXEdgeError.unsupported("rope_scaling \(kind) needs long_factor with \(dims / 2) entries")
        }
        let maxPos = Double(maxPositionEmbeddings ?? 131072)
        let orig = scaling?["original_max_position_embeddings"]?.double ?? 4096
        let f = maxPos / orig
        let scale = scaling?["long_mscale"]?.double ?? (f <= 1 ? 1 : (1 + log(f) / log(orig)).squareRoot())
        let inv = zip(long, exponents).map { 1 / ($0 * pow(base, $1)) }
        return Rope(dims: dims, invFreq: inv, traditional: false, inputScale: Float(scale))
    default:
        throw MLXEdgeError.unsupported("rope scaling type \(kind)")
    }
}

// MARK: - attention

/// Causal (optionally sliding-window) grouped-query attention for one sequence.
///
/// q (T, nHeads, D) at positions qStart..; keys/values come from `cache` layer `layer`, which holds
/// positions 0..<qStart+T. A query at position p sees keys j <= p and, with `window`, j > p - window.
/// Returns (T, nHeads * D).
func attention(_ q: [Float], T: Int, nHeads: Int, headDim D: Int, cache: KVCache, layer: Int,
               qStart: Int, window: Int?, scale: Float) -> [Float] {
    let nKV = cache.kvHeads
    let rep = nHeads / nKV
    var out = [Float](repeating: 0, count: T * nHeads * D)
    let (keys, values, cap) = cache.buffers(layer)
    q.withUnsafeBufferPointer { qp in
        out.withUnsafeMutableBufferPointer { op in
            let (qb, ob) = (qp.baseAddress!, op.baseAddress!)
            let S = qStart + T
            parallelFor(nHeads * T, work: nHeads * T * S * D * 2) { i0, i1 in
                var scores = [Float](repeating: 0, count: S)
                for i in i0..<i1 {
                    let (h, t) = (i / T, i % T)
                    let kvh = h / rep  // query head h reads kv head h / rep
                    let p = qStart + t
                    let lo = window.map { max(0, p - $0 + 1) } ?? 0
                    let qrow = qb + (t * nHeads + h) * D
                    let kbase = keys + kvh * cap * D, vbase = values + kvh * cap * D
                    var m = -Float.infinity
                    for j in lo...p {
                        scores[j] = dot(qrow, kbase + j * D, D) * scale
                        m = max(m, scores[j])
                    }
                    var total: Float = 0
                    for j in lo...p { scores[j] = expf(scores[j] - m); total += scores[j] }
                    let orow = ob + (t * nHeads + h) * D
                    for j in lo...p {
                        let w = scores[j] / total
                        let v = vbase + j * D
                        for d in 0..<D { orow[d] += w * v[d] }
                    }
                }
            }
        }
    }
    return out
}

/// What every architecture does between the projections and o_proj: optional per-head RMSNorm of
/// queries and keys (qwen3, gemma3), RoPE at the cache offset, cache update, attention.
struct AttentionCore: Sendable {
    let nHeads: Int
    let nKV: Int
    let headDim: Int
    let scale: Float
    let window: Int?
    let rope: Rope
    var qNorm: [Float]? = nil
    var kNorm: [Float]? = nil
    var eps: Float = 1e-6

    /// q (T, nHeads * D), k and v (T, nKV * D) -> (T, nHeads * D).
    func callAsFunction(q: [Float], k: [Float], v: [Float], T: Int, cache: KVCache, layer: Int) -> [Float] {
        let start = cache.offset
        var q = qNorm.map { rmsNorm(q, $0, eps: eps) } ?? q  // (T, nHeads, D)
        var k = kNorm.map { rmsNorm(k, $0, eps: eps) } ?? k  // (T, nKV, D)
        rope.apply(&q, T: T, heads: nHeads, headDim: headDim, start: start)
        rope.apply(&k, T: T, heads: nKV, headDim: headDim, start: start)
        cache.update(layer, k, v, T: T)
        return attention(q, T: T, nHeads: nHeads, headDim: headDim, cache: cache, layer: layer,
                         qStart: start, window: window, scale: scale)
    }
}
