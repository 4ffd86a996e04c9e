import Foundation

/// How one (out, in) weight matrix is stored in the bundle. Both kinds are read in place.
enum MatrixStorage: Sendable {
    /// F32, F16 or BF16 rows.
    case float(Tensor)
    /// MLX affine: `weight` U32 (out, in * bits / 32), `scales`/`biases` (out, in / groupSize);
    /// w[r, i] = scale[r, g] * q[r, i] + bias[r, g] with g = i / groupSize.
    case affine(weight: Tensor, scales: Tensor, biases: Tensor, bits: Int, groupSize: Int)
}

/// y = x W^T (+ b) for x (T, in), W (out, in) from the bundle.
public final class Linear: Sendable {
    public let inFeatures: Int
    public let outFeatures: Int
    let storage: MatrixStorage
    let bias: [Float]?

    init(storage: MatrixStorage, inFeatures: Int, outFeatures: Int, bias: [Float]? = nil) {
        self.storage = storage
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        self.bias = bias
    }

    /// x (T, in) -> (T, out).
    public func callAsFunction(_ x: [Float], rows T: Int) -> [Float] {
        precondition(x.count == T * inFeatures, "Linear: input is \(x.count) floats, expected \(T) x \(inFeatures)")
        var y = [Float](repeating: 0, count: T * outFeatures)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                apply(xp.baseAddress!, T, yp.baseAddress!)
            }
        }
        return y
    }

    /// Row `r` of W as Float (an embedding lookup).
    func row(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        switch storage {
        case .float(let t):
            for i in 0..<inFeatures { out[i] = t.float(r * inFeatures + i) }
        case .affine(let w, let s, let b, let bits, let gs):
            AffineCall(w: w, s: s, b: b, gs: gs, job: .row(r: r, out: out)).run(bits: bits)
        }
    }

    private func apply(_ x: UnsafePointer<Float>, _ T: Int, _ y: UnsafeMutablePointer<Float>) {
        let (I, O) = (inFeatures, outFeatures)
        switch storage {
        case .float(let t):
            switch t.dtype {
            case .f32: floatMatmul(F32Reader.self, t.data, x, T, y, I, O)
            case .f16: floatMatmul(F16Reader.self, t.data, x, T, y, I, O)
            case .bf16: floatMatmul(BF16Reader.self, t.data, x, T, y, I, O)
            case .u32: fatalError("checked at load")
            }
        case .affine(let w, let s, let b, let bits, let gs):
            AffineCall(w: w, s: s, b: b, gs: gs, job: .matmul(x: x, T: T, y: y, I: I, O: O)).run(bits: bits)
        }
        if let bias {
            for t in 0..<T { for o in 0..<O { y[t * O + o] += bias[o] } }
        }
    }
}

/// What an affine kernel call needs besides the types, bundled so dispatch code stays short.
private struct AffineCall {
    let w: Tensor, s: Tensor, b: Tensor, gs: Int
    let job: Job
    enum Job {
        case matmul(x: UnsafePointer<Float>, T: Int, y: UnsafeMutablePointer<Float>, I: Int, O: Int)
        case row(r: Int, out: UnsafeMutablePointer<Float>)
    }

    /// Pick concrete (bits, scale dtype) types so each kernel is compiled specialized.
    func run(bits: Int) {
        switch bits {
        case 2: withScales(Planes<Width2>.self)
        case 3: withScales(UnpackAny<Bits3>.self)
        case 4: withScales(Planes<Width4>.self)
        case 5: withScales(UnpackAny<Bits5>.self)
        case 6: withScales(UnpackAny<Bits6>.self)
        case 8: withScales(Planes<Width8>.self)
        default: fatalError("bits checked at load")
        }
    }

    private func withScales<U: Unpacker>(_ u: U.Type) {
        switch s.dtype {
        case .f16: go(u, F16Reader.self)
        case .bf16: go(u, BF16Reader.self)
        default: go(u, F32Reader.self)
        }
    }

    private func go<U: Unpacker, S: ScalarReader>(_ u: U.Type, _ sr: S.Type) {
        switch job {
        case .matmul(let x, let T, let y, let I, let O): affineMatmul(u, sr, w, s, b, gs, x, T, y, I, O)
        case .row(let r, let out): dequantizeRow(u, sr, w, s, b, gs, r, out)
        }
    }
}

// Generic kernels: opening the existentials here gives one specialized copy per (bits, dtype).

/// Row `r` dequantized into `out` in the unpacker's order (see `Unpacker.order`).
@inline(__always)
private func dequantizeRowUnordered<U: Unpacker, S: ScalarReader>(
    _: U.Type, _: S.Type, _ w: Tensor, _ s: Tensor, _ b: Tensor, _ gs: Int, _ r: Int, _ out: UnsafeMutablePointer<Float>
) {
    let rowWords = w.shape[1]
    let groups = rowWords * 32 / U.bits / gs
    let words = Words(base: w.data) + r * rowWords
    let wordsPerGroup = gs * U.bits / 32
    for g in 0..<groups {
        let scale = S.read(s.data, r * groups + g), bias = S.read(b.data, r * groups + g)
        let o = out + g * gs
        U.unpack(words + g * wordsPerGroup, o, gs)
        var i = 0
        while i < gs { store8(load8(o + i) * scale + bias, o + i); i += 8 }
    }
}

/// Row `r` dequantized in natural order (embedding lookups).
private func dequantizeRow<U: Unpacker, S: ScalarReader>(
    _ u: U.Type, _ sr: S.Type, _ w: Tensor, _ s: Tensor, _ b: Tensor, _ gs: Int, _ r: Int, _ out: UnsafeMutablePointer<Float>
) {
    let I = w.shape[1] * 32 / U.bits
    let tmp = UnsafeMutablePointer<Float>.allocate(capacity: I)
    defer { tmp.deallocate() }
    dequantizeRowUnordered(u, sr, w, s, b, gs, r, tmp)
    for g in 0..<(I / gs) { for i in 0..<gs { out[g * gs + U.order(i, gs)] = tmp[g * gs + i] } }
}

/// x (T, I) rearranged group by group into the unpacker's order.
private func reorder<U: Unpacker>(_: U.Type, _ x: UnsafePointer<Float>, _ T: Int, _ I: Int, _ gs: Int) -> [Float] {
    var out = [Float](repeating: 0, count: T * I)
    let map = (0..<gs).map { U.order($0, gs) }
    for t in 0..<T {
        for g in 0..<(I / gs) {
            let base = t * I + g * gs
            for i in 0..<gs { out[base + i] = x[base + map[i]] }
        }
    }
    return out
}

private func affineMatmul<U: Unpacker, S: ScalarReader>(
    _ u: U.Type, _ sr: S.Type, _ w: Tensor, _ s: Tensor, _ b: Tensor, _ gs: Int,
    _ x: UnsafePointer<Float>, _ T: Int, _ y: UnsafeMutablePointer<Float>, _ I: Int, _ O: Int
) {
    let groups = I / gs
    let rowWords = w.shape[1]
    let wordsPerGroup = gs * U.bits / 32
    let packed = Words(base: w.data)
    let xr = reorder(u, x, T, I, gs)
    xr.withUnsafeBufferPointer { xrp in
        let x = xrp.baseAddress!
        if T == 1 {
            // sum_i (s q_i + b) x_i = s * sum_i q_i x_i + b * sum_i x_i: the group sums of x are shared.
            var xsum = [Float](repeating: 0, count: groups)
            for g in 0..<groups { for i in 0..<gs { xsum[g] += x[g * gs + i] } }
            xsum.withUnsafeBufferPointer { xs in
                let xsum = xs.baseAddress!
                parallelFor(O, work: O * I) { r0, r1 in
                    for r in r0..<r1 {
                        let words = packed + r * rowWords
                        var acc = SIMD8<Float>()  // summed across lanes once per row
                        var biasTerm: Float = 0
                        for g in 0..<groups {
                            acc += U.dot(words + g * wordsPerGroup, x + g * gs, gs) * S.read(s.data, r * groups + g)
                            biasTerm += S.read(b.data, r * groups + g) * xsum[g]
                        }
                        y[r] = acc.sum() + biasTerm
                    }
                }
            }
            return
        }
        // Prefill: dequantize a few rows into a small buffer and reuse them for all T inputs.
        parallelFor((O + tileRows - 1) / tileRows, work: O * I * T) { c0, c1 in
            let rows = UnsafeMutablePointer<Float>.allocate(capacity: tileRows * I)
            defer { rows.deallocate() }
            for c in c0..<c1 {
                let r0 = c * tileRows, n = min(tileRows, O - r0)
                for k in 0..<n { dequantizeRowUnordered(u, sr, w, s, b, gs, r0 + k, rows + k * I) }
                tileDots(rows, n, x, T, I, y + r0, O)
            }
        }
    }
}

private func floatMatmul<R: RowReader & ScalarReader>(
    _: R.Type, _ w: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ T: Int, _ y: UnsafeMutablePointer<Float>, _ I: Int, _ O: Int
) {
    let vectorized = I / 8 * 8
    if T == 1 {
        parallelFor(O, work: O * I) { r0, r1 in
            for r in r0..<r1 {
                var acc = SIMD8<Float>()
                var i = 0
                while i < vectorized { acc += R.load8(w, r * I + i) * load8(x + i); i += 8 }
                var sum = acc.sum()
                while i < I { sum += R.read(w, r * I + i) * x[i]; i += 1 }
                y[r] = sum
            }
        }
        return
    }
    parallelFor((O + tileRows - 1) / tileRows, work: O * I * T) { c0, c1 in
        let rows = UnsafeMutablePointer<Float>.allocate(capacity: tileRows * I)
        defer { rows.deallocate() }
        for c in c0..<c1 {
            let r0 = c * tileRows, n = min(tileRows, O - r0)
            for k in 0..<n {
                let (r, row) = (r0 + k, rows + k * I)
                var i = 0
                while i < vectorized { store8(R.load8(w, r * I + i), row + i); i += 8 }
                while i < I { row[i] = R.read(w, r * I + i); i += 1 }
            }
            tileDots(rows, n, x, T, I, y + r0, O)
        }
    }
}

/// Rows dequantized together in prefill: each input vector is loaded once per tile of rows.
private let tileRows = 4

/// y[t * O + k] = dot(rows[k], x[t]) for k < n (n <= 4), t < T; four dot products share each x load.
@inline(__always)
private func tileDots(_ rows: UnsafeMutablePointer<Float>, _ n: Int, _ x: UnsafePointer<Float>, _ T: Int, _ I: Int,
                      _ y: UnsafeMutablePointer<Float>, _ O: Int) {
    guard n == 4, I % 8 == 0 else {
        for k in 0..<n { for t in 0..<T { y[t * O + k] = dot(rows + k * I, x + t * I, I) } }
        return
    }
    let (w0, w1, w2, w3) = (rows, rows + I, rows + 2 * I, rows + 3 * I)
    for t in 0..<T {
        let xt = x + t * I
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
        var i = 0
        while i < I {
            let xv = load8(xt + i)
            a0 += load8(w0 + i) * xv
            a1 += load8(w1 + i) * xv
            a2 += load8(w2 + i) * xv
            a3 += load8(w3 + i) * xv
            i += 8
        }
        y[t * O] = a0.sum(); y[t * O + 1] = a1.sum(); y[t * O + 2] = a2.sum(); y[t * O + 3] = a3.sum()
    }
}
