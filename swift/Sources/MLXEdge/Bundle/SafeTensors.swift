import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Element types a bundle may hold (bfloat16 stays as its bit pattern until a kernel reads it).
public enum DType: String, Sendable {
    case f32 = "F32", f16 = "F16", bf16 = "BF16", u32 = "U32"

    public var size: Int { self == .f32 || self == .u32 ? 4 : 2 }
}

/// A read-only memory mapping of a whole file; unmapped when the last tensor using it is gone.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let base: UnsafeRawPointer
    public let size: Int

    public init(path: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw MLXEdgeError.missingFile(path) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw MLXEdgeError.corruptFile(path, reason: "cannot stat") }
        let size = Int(st.st_size)
        guard size >= 8 else { throw MLXEdgeError.corruptFile(path, reason: "file is \(size) bytes, too short for safetensors") }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw MLXEdgeError.corruptFile(path, reason: "cannot memory-map")
        }
        self.path = path
        self.base = UnsafeRawPointer(p)
        self.size = size
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), size) }
}

/// One tensor inside a mapped safetensors file: no copy is made.
public struct Tensor: @unchecked Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    public let data: UnsafeRawPointer
    /// Keeps the mapping alive as long as the tensor is.
    let file: MappedFile

    public var count: Int { shape.reduce(1, *) }

    /// Element `i` as Float (for small tensors: norms, biases, scales; kernels read `data` directly).
    @inline(__always)
    public func float(_ i: Int) -> Float {
        switch dtype {
        case .f32: return data.loadUnaligned(fromByteOffset: 4 * i, as: Float.self)
        case .f16: return halfToFloat(data.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
        case .bf16: return Float(bitPattern: UInt32(data.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16)
        case .u32: return Float(data.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))
        }
    }

    /// The whole tensor converted to Float (copies; use only for small tensors).
    public func floats() -> [Float] { (0..<count).map(float) }
}

/// Parse the header of a safetensors file and return its tensors, validating every offset.
public func readSafeTensors(path: String) throws -> [String: Tensor] {
    let file = try MappedFile(path: path)
    let name = (path as NSString).lastPathComponent
    let headerLen = Int(file.base.loadUnaligned(as: UInt64.self).littleEndian)
    guard headerLen > 0, headerLen <= file.size - 8 else {
        throw MLXEdgeError.corruptFile(name, reason: "header length \(headerLen) exceeds the file size \(file.size)")
    }
    let headerData = Data(bytes: file.base + 8, count: headerLen)
    guard let header = (try? JSONSerialization.jsonObject(with: headerData)) as? [String: Any] else {
        throw MLXEdgeError.corruptFile(name, reason: "header is not a JSON object")
    }
    let dataStart = 8 + headerLen
    var out: [String: Tensor] = [:]
    for (key, value) in header where key != "__metadata__" {
        guard let info = value as? [String: Any], let dt = info["dtype"] as? String,
              let shape = (info["shape"] as? [Any])?.compactMap({ ($0 as? NSNumber)?.intValue }),
              let offsets = (info["data_offsets"] as? [Any])?.compactMap({ ($0 as? NSNumber)?.intValue }),
              offsets.count == 2
        else { throw MLXEdgeError.corruptFile(name, reason: "bad header entry for \(key)") }
        guard let dtype = DType(rawValue: dt) else {
            throw MLXEdgeError.unsupported("\(name): tensor \(key) has dtype \(dt) (F32, F16, BF16 and U32 are supported)")
        }
        let count = shape.reduce(1, *)
        guard offsets[0] >= 0, offsets[1] - offsets[0] == count * dtype.size, dataStart + offsets[1] <= file.size else {
            throw MLXEdgeError.corruptFile(name, reason: "tensor \(key) \(shape) \(dt) does not fit its data_offsets \(offsets) (file truncated?)")
        }
        out[key] = Tensor(name: key, dtype: dtype, shape: shape, data: file.base + dataStart + offsets[0], file: file)
    }
    return out
}

/// IEEE half -> float, exact for every input (subnormals, infinities and NaN included).
@inline(__always)
public func halfToFloat(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let em = UInt32(h & 0x7FFF)
    // Shifting puts the half's exponent/mantissa in place; the multiply rebiases (2^112) and
    // normalizes subnormals in one exact step. Infinities and NaN are selected without a branch.
    let finite = (Float(bitPattern: em << 13) * 0x1p112).bitPattern
    let special = 0x7F80_0000 | ((em & 0x3FF) << 13)
    return Float(bitPattern: (em >= 0x7C00 ? special : finite) | sign)
}
