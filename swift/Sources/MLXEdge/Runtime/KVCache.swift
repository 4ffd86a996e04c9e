/// Keys and values of every layer for positions 0..<offset (port of mlxedge/backends/numpy/cache.py).
///
/// Every layer keeps all positions, sliding-window layers included (attention reads only the
/// window), so the cache can be trimmed back to any earlier position when a chat rewrites its end.
/// Not thread-safe: one generation owns it (a `ChatSession` or one `generate` call).
public final class KVCache {
    public let layers: Int
    let kvHeads: Int
    let headDim: Int
    /// Per layer: (kvHeads, capacity, headDim).
    private var keys: [UnsafeMutablePointer<Float>?]
    private var values: [UnsafeMutablePointer<Float>?]
    private var capacity = 0
    /// Positions held; the next token goes at position `offset`.
    public private(set) var offset = 0
    static let grow = 256

    public init(layers: Int, kvHeads: Int, headDim: Int) {
        self.layers = layers
        self.kvHeads = kvHeads
        self.headDim = headDim
        keys = Array(repeating: nil, count: layers)
        values = Array(repeating: nil, count: layers)
    }

    deinit {
        for p in keys + values { p?.deallocate() }
    }

    /// Store k, v (T, kvHeads, headDim) at positions offset..<offset+T of `layer`.
    /// The model calls this for every layer, then `advance(T)` once.
    func update(_ layer: Int, _ k: [Float], _ v: [Float], T: Int) {
        let end = offset + T
        if end > capacity { reserve((end + Self.grow - 1) / Self.grow * Self.grow) }
        let (kb, vb) = (keys[layer]!, values[layer]!)
        for t in 0..<T {
            for h in 0..<kvHeads {
                let dst = (h * capacity + offset + t) * headDim
                let src = (t * kvHeads + h) * headDim
                for d in 0..<headDim { kb[dst + d] = k[src + d]; vb[dst + d] = v[src + d] }
            }
        }
    }

    /// (keys, values, capacity) of `layer`: keys[(h * capacity + position) * headDim + d].
    func buffers(_ layer: Int) -> (UnsafePointer<Float>, UnsafePointer<Float>, Int) {
        (UnsafePointer(keys[layer]!), UnsafePointer(values[layer]!), capacity)
    }

    func advance(_ n: Int) { offset += n }

    /// Forget the last `n` positions (fewer if the cache holds fewer); returns how many.
    @discardableResult
    public func trim(_ n: Int) -> Int {
        let m = max(0, min(n, offset))
        offset -= m
        return m
    }

    public func reset() { offset = 0 }

    private func reserve(_ newCapacity: Int) {
        for l in 0..<layers {
            for which in 0..<2 {
                let fresh = UnsafeMutablePointer<Float>.allocate(capacity: kvHeads * newCapacity * headDim)
                fresh.initialize(repeating: 0, count: kvHeads * newCapacity * headDim)
                if let old = which == 0 ? keys[l] : values[l] {
                    for h in 0..<kvHeads {
                        (fresh + h * newCapacity * headDim).update(from: old + h * capacity * headDim, count: offset * headDim)
                    }
                    old.deallocate()
                }
                if which == 0 { keys[l] = fresh } else { values[l] = fresh }
            }
        }
        capacity = newCapacity
    }
}
