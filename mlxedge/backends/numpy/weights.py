"""Bundle tensors -> layers for the NumPy backend, in one of three weight modes.

A module `p` is quantized when the bundle has `p.scales`; its bits/group size come from
`config["quantization"][p]` when that is a dict (mlx-lm's per-module overrides), else from the
top-level `config["quantization"]`. Every tensor must be consumed by the model builder:
`check_all_used()` fails loudly on leftovers, as a converter should.

Modes (`memory.py` picks one from what fits):
- float32: dequantize once at load, keep W.T (in, out) so `x @ wt` is one BLAS call; 4 bytes
  per parameter (SmolLM2-135M: ~540 MB), the fastest.
- float16: dequantize once into float16 (out, in), widened per call in blocks (lean.py): 2 bytes
  per parameter.
- lean: keep the packed arrays (re-laid column-major, same size; float matrices stay mapped as
  stored), unpacked per call (lean.py): memory near the bundle's size.
Speeds of the three: docs/benchmarks.md. Tensors are memory-mapped one at a time (`tensor_loaders`).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from ... import safetensors
from ...dtypes import as_float32
from ...errors import MlxEdgeError
from ...safetensors import quant_spec
from .gemm import AffineGemm
from .lean import ROW_BLOCK, Half, LeanAffine, PackedAffine, PackedFloat, Scratch, matmul_t

MODES = ("float32", "float16", "lean")


class Linear:
    """y = x @ W.T + b with W (out, in): float32 `w` (contiguous), or a `lazy` product (lean.py's
    widened or packed forms, gemm.AffineGemm on the weights as stored). `pack()` adds MLAS's SGEMM
    on a packed float32 copy for products of 2+ rows (gemm.DenseGemm): the server does it for float
    weights and for those wider than 4 bits that MatMulNBits splits into two planes (gemm.py).

    `name` is the module path in the bundle ("model.layers.0.mlp.down_proj"), for calibration."""

    def __init__(self, w: np.ndarray | None, bias: np.ndarray | None = None, lazy=None, name: str | None = None,
                 kernels=None):
        self.w = w              # (out, in) float32, contiguous, or None
        self.bias = bias        # (out,) float32 or None
        self.lazy = lazy        # Half / PackedAffine / PackedFloat / AffineGemm: `.matmul(x)`
        self.name = name
        self.kernels = kernels  # gemm.Kernels, or None: NumPy's BLAS
        self.packed = None      # gemm.DenseGemm, from `pack()`
        self.out_features = (w.shape[0] if w is not None else lazy.out_features)

    def pack_bytes(self) -> int:
        """The memory `pack()` would add."""
        if self.kernels is None or self.packed is not None:
            return 0
        if self.w is not None:
            return self.w.nbytes
        if isinstance(self.lazy, AffineGemm) and self.lazy.wide:
            return 4 * self.lazy.out_features * self.lazy.in_features
        return 0

    def pack(self) -> None:
        """Make the MLAS session for products of 2+ rows now (the server, at load)."""
        if self.pack_bytes():
            self.packed = self.kernels.dense(self.w if self.w is not None else self.lazy.dense())
            self.packed.ensure()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.packed is not None and x.shape[0] > 1:
            y = self.packed(x)  # (T, out)
        elif self.lazy is not None:
            y = self.lazy.matmul(x)
        else:
            y = matmul_t(self.w, x)
        if self.bias is not None:
            y += self.bias
        return y


def fuse(linears: list[Linear]) -> "Fused":
    """One matmul for several projections of the same input (q/k/v, gate/up)."""
    return Fused(linears)


class Fused:
    def __init__(self, linears: list[Linear]):
        self.sizes = [lin.out_features for lin in linears]
        ends = np.cumsum(self.sizes).tolist()
        self.bounds = list(zip([0] + ends[:-1], ends))
        self.parts = linears
        self.one = None
        lazies = [lin.lazy for lin in linears]
        if all(isinstance(z, AffineGemm) for z in lazies) and len({(z.bits, z.group_size) for z in lazies}) == 1:
            kernels = linears[0].kernels
            self.one = Linear(None, self._bias(), lazy=kernels.affine([p for z in lazies for p in z.parts]),
                              kernels=kernels)
        elif all(lin.w is not None for lin in linears):
            w = np.concatenate([lin.w for lin in linears])  # (sum(sizes), in)
            self.one = Linear(w, self._bias(), kernels=linears[0].kernels)
        elif all(isinstance(z, Half) and lin.bias is None for z, lin in zip(lazies, linears)):
            w16 = np.concatenate([z.w16 for z in lazies])  # (sum(sizes), in)
            self.one = Linear(None, lazy=Half(w16, lazies[0].scratch))
        if self.one is not None:
            for lin in linears:  # the fused copy replaces them; drop the originals' memory
                lin.w = lin.lazy = None

    def _bias(self) -> np.ndarray | None:
        if all(lin.bias is None for lin in self.parts):
            return None
        return np.concatenate([lin.bias if lin.bias is not None else np.zeros(n, np.float32)
                               for lin, n in zip(self.parts, self.sizes)])

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        if self.one is None:
            return [lin(x) for lin in self.parts]
        y = self.one(x)  # (T, sum(sizes))
        return [y[:, a:b] for a, b in self.bounds]


class Embedding:
    """Token lookup, and the same table as a tied output projection."""

    def __init__(self, table: np.ndarray | None = None, lazy=None, kernels=None, stored=None):
        self.table = table      # (vocab, dim) float32: lookup, and a tied lm_head's W
        self.lazy = lazy        # Half / PackedAffine / PackedFloat: `.rows(ids)`, `.matmul(x)`
        self.kernels = kernels  # for the tied head's products (Linear)
        self.stored = stored    # PackedAffine as stored: the tied head's MLAS product (gemm.AffineGemm)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        if self.table is not None:
            return self.table[ids]  # (T, dim)
        return self.lazy.rows(ids)

    def as_linear(self) -> Linear:
        if self.stored is not None:
            return Linear(None, lazy=self.kernels.affine([self.stored]), kernels=self.kernels)
        if self.table is not None:
            return Linear(self.table, kernels=self.kernels)
        return Linear(None, lazy=self.lazy)


class Weights:
    """The bundle's tensors, handed out as layers in `mode`; remembers which were used."""

    def __init__(self, directory: str | Path, config: dict, mode: str = "float32", kernels=None):
        if mode not in MODES:
            raise MlxEdgeError(f"unknown weight mode {mode!r}; choose from {', '.join(MODES)}")
        self.raw = tensor_loaders(directory)
        self.quant = config.get("quantization") or {}
        self.mode = mode
        self.kernels = kernels  # gemm.Kernels, or None: NumPy's BLAS for every product
        self.scratch = Scratch()
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.raw

    def vector(self, name: str) -> np.ndarray:
        """A float tensor (norm weights, biases) as contiguous float32."""
        if name not in self.raw:
            raise MlxEdgeError(f"bundle is missing tensor {name}")
        self.used.add(name)
        return np.array(as_float32(self.raw[name]()), dtype=np.float32)

    def _source(self, prefix: str):
        """PackedAffine or PackedFloat over `prefix.weight` as stored."""
        name = f"{prefix}.weight"
        if name not in self.raw:
            raise MlxEdgeError(f"bundle is missing tensor {name}")
        w = self.raw[name]()
        self.used.add(name)
        if f"{prefix}.scales" in self.raw:
            if f"{prefix}.biases" not in self.raw:
                raise MlxEdgeError(f"{prefix} has scales but no biases (only affine quantization is supported)")
            scales, biases = self.raw[f"{prefix}.scales"](), self.raw[f"{prefix}.biases"]()
            self.used.update({f"{prefix}.scales", f"{prefix}.biases"})
            bits, group_size = quant_spec(self.quant, prefix)
            if w.shape[-1] * 32 // bits != scales.shape[-1] * group_size:
                raise MlxEdgeError(f"{prefix}: weight {w.shape} and scales {scales.shape} do not match "
                                   f"{bits}-bit quantization with group size {group_size}")
            return PackedAffine(w, scales, biases, bits, group_size)
        return PackedFloat(w, self.scratch)

    def _lean(self, src):
        """Packed weights re-laid for unpacking per call (a copy of the same size); floats as stored."""
        return LeanAffine(src, self.scratch) if isinstance(src, PackedAffine) else src

    def _half(self, src, prefix: str) -> Half:
        """W (out, in) in float16, converted a block of rows at a time."""
        w16 = np.empty((src.out_features, src.in_features), np.float16)
        with np.errstate(over="ignore"):
            for r in range(0, src.out_features, ROW_BLOCK):
                w16[r:r + ROW_BLOCK] = src.rows(slice(r, r + ROW_BLOCK))
        if not np.isfinite(w16).all():
            raise MlxEdgeError(f"{prefix} has weights beyond float16's range; use mode 'float32' or 'lean'")
        return Half(w16, self.scratch)

    def linear(self, prefix: str) -> Linear:
        """`prefix.weight` (+ `prefix.bias` if present) as a Linear."""
        src = self._source(prefix)
        bias = self.vector(f"{prefix}.bias") if self.has(f"{prefix}.bias") else None
        if self.kernels is not None and self.kernels.takes(src):
            return Linear(None, bias, lazy=self.kernels.affine([src]), name=prefix, kernels=self.kernels)
        if self.mode == "lean":
            return Linear(None, bias, lazy=self._lean(src), name=prefix)
        if self.mode == "float16":
            return Linear(None, bias, lazy=self._half(src, prefix), name=prefix)
        return Linear(src.dense(), bias, name=prefix, kernels=self.kernels)

    def embedding(self, prefix: str) -> Embedding:
        src = self._source(prefix)
        if self.kernels is not None and self.kernels.takes(src):  # rows looked up as stored, any mode
            return Embedding(lazy=src, kernels=self.kernels, stored=src)
        if self.mode == "lean":
            return Embedding(lazy=self._lean(src))
        if self.mode == "float16":  # one float16 table serves lookup and a tied lm_head
            return Embedding(lazy=self._half(src, prefix))
        return Embedding(table=src.dense(), kernels=self.kernels)  # (vocab, dim): lookup, and lm_head when tied

    def check_all_used(self) -> None:
        left = sorted(set(self.raw) - self.used)
        if left:
            more = f" (and {len(left) - 5} more)" if len(left) > 5 else ""
            raise MlxEdgeError(f"bundle has tensors this architecture does not use: "
                               f"{', '.join(left[:5])}{more}")


def bundle_files(directory: str | Path) -> list[Path]:
    """The bundle's safetensors files (as formats.bundle.read_weights finds them)."""
    files = sorted(Path(directory).glob("model*.safetensors"))
    if not files:
        raise MlxEdgeError(f"{directory} has no model*.safetensors")
    return files


def read_raw(directory: str | Path) -> dict[str, np.ndarray]:
    """All tensors memory-mapped as stored (bfloat16 as uint16 bits: widened only when used)."""
    raw: dict[str, np.ndarray] = {}
    for f in bundle_files(directory):
        raw.update({k: t.load().view(np.ndarray) for k, t in safetensors.scan(f).items()})  # plain views: cheaper slicing
    return raw


def tensor_loaders(directory: str | Path) -> dict[str, Callable[[], np.ndarray]]:
    """name -> a loader that memory-maps that tensor alone, as stored (bfloat16 as uint16 bits).

    One mapping per tensor: a tensor converted at load is unmapped when its array goes, so the
    address space holds one source tensor at a time, not the whole bundle."""
    raw: dict[str, Callable[[], np.ndarray]] = {}
    for f in bundle_files(directory):
        n, header = safetensors.read_header(f)
        for name, info in header.items():
            if name != "__metadata__":
                raw[name] = partial(_map, f, 8 + n + info["data_offsets"][0],
                                    safetensors.DTYPES[info["dtype"]], tuple(info["shape"]))
    return raw


def _map(path: Path, offset: int, dtype, shape: tuple[int, ...]) -> np.ndarray:
    if math.prod(shape) == 0:
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape).view(np.ndarray)  # plain: cheap slices
