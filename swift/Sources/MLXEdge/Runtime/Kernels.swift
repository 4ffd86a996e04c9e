import Foundation
#if canImport(Accelerate)
import Accelerate
#endif

// Matrix-vector and matrix-matrix products against weights read in place from the mapped file:
// float (F32/F16/BF16) rows are converted 8 lanes at a time, MLX affine rows are unpacked and
// scaled per group on the fly. Nothing is dequantized ahead of time.

// MARK: - element readers (static dispatch: one specialized kernel per storage type)

protocol ScalarReader { static func read(_ p: UnsafeRawPointer, _ i: Int) -> Float }
enum F32Reader: ScalarReader {
    @inline(__always) static func read(_ p: UnsafeRawPointer, _ i: Int) -> Float { p.loadUnaligned(fromByteOffset: 4 * i, as: Float.self) }
}
enum F16Reader: ScalarReader {
    @inline(__always) static func read(_ p: UnsafeRawPointer, _ i: Int) -> Float { halfToFloat(p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
}
enum BF16Reader: ScalarReader {
    @inline(__always) static func read(_ p: UnsafeRawPointer, _ i: Int) -> Float {
        Float(bitPattern: UInt32(p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16)
    }
}

@inline(__always) func widen(_ v: SIMD8<UInt16>) -> SIMD8<UInt32> {
    SIMD8<UInt32>(UInt32(v[0]), UInt32(v[1]), UInt32(v[2]), UInt32(v[3]), UInt32(v[4]), UInt32(v[5]), UInt32(v[6]), UInt32(v[7]))
}

/// Eight consecutive weights of a float row as Float lanes.
protocol RowReader { static func load8(_ p: UnsafeRawPointer, _ i: Int) -> SIMD8<Float> }
extension F32Reader: RowReader {
    @inline(__always) static func load8(_ p: UnsafeRawPointer, _ i: Int) -> SIMD8<Float> {
        p.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
    }
}
extension F16Reader: RowReader {
    @inline(__always) static func load8(_ p: UnsafeRawPointer, _ i: Int) -> SIMD8<Float> {
        let h = widen(p.loadUnaligned(fromByteOffset: 2 * i, as: SIMD8<UInt16>.self))
        // Exponent/mantissa moved into float position, then rebiased by 2^112 (exact, subnormals
        // included); infinities/NaN are not expected in weights.
        let magnitude = unsafeBitCast((h & 0x7FFF) &<< 13, to: SIMD8<Float>.self) * 0x1p112
        return unsafeBitCast(unsafeBitCast(magnitude, to: SIMD8<UInt32>.self) | ((h & 0x8000) &<< 16), to: SIMD8<Float>.self)
    }
}
extension BF16Reader: RowReader {
    @inline(__always) static func load8(_ p: UnsafeRawPointer, _ i: Int) -> SIMD8<Float> {
        let h = widen(p.loadUnaligned(fromByteOffset: 2 * i, as: SIMD8<UInt16>.self))
        return unsafeBitCast(h &<< 16, to: SIMD8<Float>.self)
    }
}

// MARK: - MLX affine unpacking

/// Packed uint32 words, read unaligned: safetensors writers (mlx included) do not align tensors.
struct Words {
    let base: UnsafeRawPointer
    @inline(__always) subscript(i: Int) -> UInt32 { base.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self) }
    @inline(__always) static func + (w: Words, n: Int) -> Words { Words(base: w.base + 4 * n) }
}

/// Reads one group of `groupSize` packed values. Kernels work in the unpacker's own value order
/// (`order`), into which they first rearrange the input vector, so that unpacking needs no
/// per-lane shifts (x86 without AVX2 has none).
protocol Unpacker {
    static var bits: Int { get }
    /// Position in the natural order of the value the unpacker yields at position `i`.
    static func order(_ i: Int, _ groupSize: Int) -> Int
    /// sum_i q_i * x_i over one group as 8 partial sums; `x` is in the unpacker's order.
    static func dot(_ words: Words, _ x: UnsafePointer<Float>, _ groupSize: Int) -> SIMD8<Float>
    /// The group's q values as Float, in the unpacker's order.
    static func unpack(_ words: Words, _ out: UnsafeMutablePointer<Float>, _ groupSize: Int)
}

/// UInt8 lanes as Float lanes. Written lane by lane: the optimizer turns this into vector
/// widening + conversion, while the generic stdlib initializers stay out-of-line calls here.
@inline(__always) func floats(_ q: SIMD8<UInt8>) -> SIMD8<Float> {
    SIMD8<Float>(Float(q[0]), Float(q[1]), Float(q[2]), Float(q[3]), Float(q[4]), Float(q[5]), Float(q[6]), Float(q[7]))
}

@inline(__always) func floats(_ q: SIMD8<Int32>) -> SIMD8<Float> {
    SIMD8<Float>(Float(q[0]), Float(q[1]), Float(q[2]), Float(q[3]), Float(q[4]), Float(q[5]), Float(q[6]), Float(q[7]))
}

@inline(__always) func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}
@inline(__always) func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}

/// 2, 4 and 8 bits: MLX packs value i of a row at bit i * bits of a little-endian stream, so byte k
/// holds values k*per ..< (k+1)*per (per = 8 / bits). "Plane" j of a group, the values j, j+per,
/// j+2per..., is (bytes >> (j * bits)) & mask: one shift for all lanes. The unpacker's order is
/// plane by plane.
protocol PlaneWidth { static var bits: Int { get } }
enum Width2: PlaneWidth { static let bits = 2 }
enum Width4: PlaneWidth { static let bits = 4 }
enum Width8: PlaneWidth { static let bits = 8 }

enum Planes<W: PlaneWidth>: Unpacker {
    static var bits: Int { W.bits }
    @inline(__always) static var per: Int { 8 / W.bits }

    @inline(__always) static func order(_ i: Int, _ gs: Int) -> Int {
        let lanes = gs / per  // bytes per group = values per plane
        return (i % lanes) * per + i / lanes
    }

    @inline(__always) static func plane(_ bytes: UnsafeRawPointer, _ j: Int, _ k: Int) -> SIMD8<Float> {
        let b = bytes.loadUnaligned(fromByteOffset: k, as: SIMD8<UInt8>.self)
        let q = W.bits == 8 ? b : (b &>> UInt8(j * W.bits)) & UInt8((1 << W.bits) - 1)
        return floats(q)
    }

    @inline(__always) static func dot(_ words: Words, _ x: UnsafePointer<Float>, _ gs: Int) -> SIMD8<Float> {
        let lanes = gs / per
        var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
        for j in 0..<per {
            var k = 0
            while k + 16 <= lanes {
                acc0 += plane(words.base, j, k) * load8(x + j * lanes + k)
                acc1 += plane(words.base, j, k + 8) * load8(x + j * lanes + k + 8)
                k += 16
            }
            if k < lanes { acc0 += plane(words.base, j, k) * load8(x + j * lanes + k) }  // 8 lanes left
        }
        return acc0 + acc1
    }

    @inline(__always) static func unpack(_ words: Words, _ out: UnsafeMutablePointer<Float>, _ gs: Int) {
        let lanes = gs / per
        for j in 0..<per {
            var k = 0
            while k < lanes { store8(plane(words.base, j, k), out + j * lanes + k); k += 8 }
        }
    }
}

/// 3, 5 and 6 bits: values straddle bytes, but every 8 values fill exactly `bits` bytes, so each
/// run of 8 is read as one little-endian integer and split with constant shifts. Natural order.
enum UnpackAny<B: PlaneWidth>: Unpacker {
    static var bits: Int { B.bits }
    @inline(__always) static func order(_ i: Int, _ gs: Int) -> Int { i }

    /// Values 8c ..< 8c+8 of the group starting at `words`.
    @inline(__always) static func eight(_ words: Words, _ c: Int) -> SIMD8<Float> {
        var w: UInt64 = 0
        withUnsafeMutableBytes(of: &w) { $0.copyMemory(from: UnsafeRawBufferPointer(start: words.base + c * B.bits, count: B.bits)) }
        w = UInt64(littleEndian: w)
        let m = UInt64((1 << B.bits) - 1), b = UInt64(B.bits)
        let q = SIMD8<Int32>(Int32(truncatingIfNeeded: w & m), Int32(truncatingIfNeeded: (w >> b) & m),
                             Int32(truncatingIfNeeded: (w >> (2 * b)) & m), Int32(truncatingIfNeeded: (w >> (3 * b)) & m),
                             Int32(truncatingIfNeeded: (w >> (4 * b)) & m), Int32(truncatingIfNeeded: (w >> (5 * b)) & m),
                             Int32(truncatingIfNeeded: (w >> (6 * b)) & m), Int32(truncatingIfNeeded: (w >> (7 * b)) & m))
        return floats(q)
    }
    @inline(__always) static func dot(_ words: Words, _ x: UnsafePointer<Float>, _ gs: Int) -> SIMD8<Float> {
        var acc = SIMD8<Float>()
        for c in 0..<(gs / 8) { acc += eight(words, c) * load8(x + 8 * c) }
        return acc
    }
    @inline(__always) static func unpack(_ words: Words, _ out: UnsafeMutablePointer<Float>, _ gs: Int) {
        for c in 0..<(gs / 8) { store8(eight(words, c), out + 8 * c) }
    }
}
enum Bits3: PlaneWidth { static let bits = 3 }
enum Bits5: PlaneWidth { static let bits = 5 }
enum Bits6: PlaneWidth { static let bits = 6 }

// MARK: - dot products

@inline(__always) func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    #if canImport(Accelerate)
    var r: Float = 0
    vDSP_dotpr(a, 1, b, 1, &r, vDSP_Length(n))
    return r
    #else
    var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
    var i = 0
    while i + 16 <= n {
        acc0 += load8(a + i) * load8(b + i)
        acc1 += load8(a + i + 8) * load8(b + i + 8)
        i += 16
    }
    var s = (acc0 + acc1).sum()
    while i < n { s += a[i] * b[i]; i += 1 }
    return s
    #endif
}

/// Run `body(start, end)` over `0..<count` split into chunks, on all cores when the work is big enough.
/// Chunks must write disjoint memory (our kernels each own a range of output rows).
func parallelFor(_ count: Int, work: Int, _ body: (Int, Int) -> Void) {
    let threads = ProcessInfo.processInfo.activeProcessorCount
    // Below ~64k multiply-adds the dispatch costs more than it saves.
    guard threads > 1, work >= 1 << 16, count > 1 else { body(0, count); return }
    let chunks = min(count, threads * 4)
    withoutActuallyEscaping(body) { body in
        // concurrentPerform returns only when every chunk is done, so the closure (and the raw
        // pointers it captures) never outlives this call.
        let shared = UncheckedSendable(body)
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            shared.value(count * c / chunks, count * (c + 1) / chunks)
        }
    }
}

struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
