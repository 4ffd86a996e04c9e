"""Bundle tensors -> float32 matrices for the NumPy backend, dequantizing MLX affine weights.

A module `p` is quantized when the bundle has `p.scales`; its bits/group size come from
`config["quantization"][p]` when that is a dict (mlx-lm's per-module overrides), else from the
top-level `config["quantization"]`. Every tensor must be consumed by the model builder:
`check_all_used()` fails loudly on leftovers, as a converter should.

Two ways to hold weights (`lean`):
- default: dequantize once at load, keep float32 transposed `(in, out)` so `x @ wt` is one BLAS
  call. Memory is 4 bytes per parameter (SmolLM2-135M: ~540 MB).
- lean: keep the memory-mapped packed arrays and dequantize blocks of rows on every call. Memory
  stays near the bundle's size (SmolLM2-135M Q4: peak RSS 144 MB vs 645 MB), but every token pays
  a full dequantization (~0.4 vs ~10 tokens/s decode on a busy 2-core box).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import MlxEdgeError
from ...formats.bundle import read_weights
from ...quant import affine
from ...safetensors import quant_spec

ROW_BLOCK = 256  # rows dequantized at a time: temporaries stay small


class Linear:
    """y = x @ W.T + b with W (out, in). Dense: W.T stored contiguous; lean: dequantized per call.

    `name` is the module path in the bundle ("model.layers.0.mlp.down_proj"), for calibration."""

    def __init__(self, wt: np.ndarray | None, bias: np.ndarray | None = None, lazy=None, name: str | None = None):
        self.wt = wt            # (in, out) float32, contiguous; None when lazy
        self.bias = bias        # (out,) float32 or None
        self.lazy = lazy        # () -> W (out, in) float32, for lean mode
        self.name = name
        self.out_features = (wt.shape[1] if wt is not None else lazy.out_features)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.wt is not None:
            y = x @ self.wt  # (T, out)
        else:  # lean: dequantize a block of output rows at a time, never the whole matrix
            y = np.empty((x.shape[0], self.out_features), np.float32)
            for r in range(0, self.out_features, ROW_BLOCK):
                y[:, r:r + ROW_BLOCK] = x @ self.lazy.rows(slice(r, r + ROW_BLOCK)).T
        if self.bias is not None:
            y += self.bias
        return y


def fuse(linears: list[Linear]) -> "Fused":
    """One matmul for several projections of the same input (q/k/v, gate/up) when dense."""
    return Fused(linears)


class Fused:
    def __init__(self, linears: list[Linear]):
        self.sizes = [lin.out_features for lin in linears]
        ends = np.cumsum(self.sizes).tolist()
        self.bounds = list(zip([0] + ends[:-1], ends))
        self.parts = linears
        self.one = None
        if all(lin.wt is not None for lin in linears):
            wt = np.ascontiguousarray(np.concatenate([lin.wt for lin in linears], axis=1))
            if any(lin.bias is not None for lin in linears):
                bias = np.concatenate([lin.bias if lin.bias is not None else np.zeros(n, np.float32)
                                       for lin, n in zip(linears, self.sizes)])
            else:
                bias = None
            self.one = Linear(wt, bias)
            for lin in linears:  # the fused copy replaces them; drop the originals' memory
                lin.wt = None

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        if self.one is None:
            return [lin(x) for lin in self.parts]
        y = self.one(x)  # (T, sum(sizes))
        return [y[:, a:b] for a, b in self.bounds]


class _LazyAffine:
    """Packed weights kept memory-mapped; dequantized on each call (lean mode)."""

    def __init__(self, w, scales, biases, bits, group_size):
        self.w, self.scales, self.biases = w, scales, biases
        self.bits, self.group_size = bits, group_size
        self.out_features = w.shape[0]

    def __call__(self) -> np.ndarray:
        return affine.dequantize(self.w, self.scales, self.biases, self.bits, self.group_size)

    def transposed(self) -> np.ndarray:
        """W.T (in, out) contiguous float32, dequantized in row blocks that stay in cache."""
        out_t = np.empty((self.w.shape[1] * 32 // self.bits, self.out_features), np.float32)
        for r in range(0, self.out_features, ROW_BLOCK):
            out_t[:, r:r + ROW_BLOCK] = self.rows(slice(r, r + ROW_BLOCK)).T
        return out_t

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return affine.dequantize(self.w[ids], self.scales[ids], self.biases[ids],
                                 self.bits, self.group_size)


class _LazyFloat:
    def __init__(self, w):
        self.w = w
        self.out_features = w.shape[0]

    def __call__(self) -> np.ndarray:
        return np.asarray(self.w, dtype=np.float32)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.w[ids], dtype=np.float32)

    def transposed(self) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(self.w, dtype=np.float32).T)


class Embedding:
    """Token lookup, and the transposed use as a tied output projection."""

    def __init__(self, table_t: np.ndarray | None = None, table: np.ndarray | None = None, lazy=None):
        self.table_t = table_t  # (dim, vocab): serves both lookup and tied lm_head
        self.table = table      # (vocab, dim): when the model is untied
        self.lazy = lazy

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        if self.table is not None:
            return self.table[ids]  # (T, dim)
        if self.table_t is not None:
            return np.ascontiguousarray(self.table_t[:, ids].T)  # (T, dim)
        return self.lazy.rows(ids)

    def as_linear(self) -> Linear:
        if self.table_t is None and self.table is not None:
            self.table_t, self.table = np.ascontiguousarray(self.table.T), None
        if self.table_t is not None:
            return Linear(self.table_t)
        return Linear(None, lazy=self.lazy)


class Weights:
    """The bundle's tensors, handed out as float32 layers; remembers which were used."""

    def __init__(self, directory: str | Path, config: dict, lean: bool = False):
        self.raw = read_weights(directory)
        self.quant = config.get("quantization") or {}
        self.lean = lean
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.raw

    def vector(self, name: str) -> np.ndarray:
        """A float tensor (norm weights, biases) as contiguous float32."""
        if name not in self.raw:
            raise MlxEdgeError(f"bundle is missing tensor {name}")
        self.used.add(name)
        return np.array(self.raw[name], dtype=np.float32)

    def _source(self, prefix: str):
        """(dense (out, in) float32 or None, lazy source or None) for `prefix.weight`."""
        name = f"{prefix}.weight"
        if name not in self.raw:
            raise MlxEdgeError(f"bundle is missing tensor {name}")
        w = self.raw[name]
        self.used.add(name)
        if f"{prefix}.scales" in self.raw:
            scales, biases = self.raw[f"{prefix}.scales"], self.raw.get(f"{prefix}.biases")
            if biases is None:
                raise MlxEdgeError(f"{prefix} has scales but no biases (only affine quantization is supported)")
            self.used.update({f"{prefix}.scales", f"{prefix}.biases"})
            bits, group_size = quant_spec(self.quant, prefix)
            if w.shape[-1] * 32 // bits != scales.shape[-1] * group_size:
                raise MlxEdgeError(f"{prefix}: weight {w.shape} and scales {scales.shape} do not match "
                                   f"{bits}-bit quantization with group size {group_size}")
            lazy = _LazyAffine(w, scales, biases, bits, group_size)
        else:
            lazy = _LazyFloat(w)
        return lazy

    def linear(self, prefix: str) -> Linear:
        """`prefix.weight` (+ `prefix.bias` if present) as a Linear."""
        lazy = self._source(prefix)
        bias = self.vector(f"{prefix}.bias") if self.has(f"{prefix}.bias") else None
        if self.lean:
            return Linear(None, bias, lazy=lazy, name=prefix)
        return Linear(lazy.transposed(), bias, name=prefix)

    def embedding(self, prefix: str, tied: bool) -> Embedding:
        lazy = self._source(prefix)
        if self.lean:
            return Embedding(lazy=lazy)
        if tied:  # one transposed copy serves lookup and lm_head
            return Embedding(table_t=lazy.transposed())
        return Embedding(table=np.ascontiguousarray(lazy(), dtype=np.float32))  # (vocab, dim)

    def check_all_used(self) -> None:
        left = sorted(set(self.raw) - self.used)
        if left:
            more = f" (and {len(left) - 5} more)" if len(left) > 5 else ""
            raise MlxEdgeError(f"bundle has tensors this architecture does not use: "
                               f"{', '.join(left[:5])}{more}")
