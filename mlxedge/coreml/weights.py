"""Bundle tensors -> Core ML constants, carried as stored (never re-quantized).

MLX affine groups dequantize as w = s * q + b (s, b per group of `group_size` along a row).
`constexpr_blockwise_shift_scale` computes w = scale * (data - offset), so the codes q go in
unchanged as `data` and offset = -b / s:
- 4-bit codes as uint4, 8-bit as uint8 (the exact form, same size as the bundle);
- 2/3-bit codes widened to uint4, 5/6-bit to uint8: still exact, larger than the bundle (the
  runtime's other sub-byte form, a LUT, needs a table per group, larger again; chaining a LUT
  into shift_scale is reordered by coremltools for iOS 18 and not safe per group);
- the offset's dtype is float16 when its rounding error stays at the float16 noise of the weights
  themselves (half an ulp of the tensor's largest weight), else float32 with a float32 scale.
Float tensors become float16 constants (float32 for a float32 export). Every tensor's error
against MLX's dequantization (quant/affine.py) is measured here and returned for the report.

Imported only by the export command (it needs coremltools).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types
from coremltools.converters.mil.mil.ops.defs.iOS18 import constexpr_blockwise_shift_scale

from ..dtypes import as_float32
from ..errors import MlxEdgeError
from ..quant.affine import dequantize, unpack
from ..safetensors import quant_spec

EPS16 = 2.0 ** -11  # float16's relative rounding error (half an ulp)


@dataclass
class TensorReport:
    """How one bundle tensor was carried and what that cost against MLX's dequantization."""

    name: str          # bundle tensor name ("model.layers.0.mlp.down_proj.weight")
    op: str            # the MIL op (or const) holding it
    form: str          # "shift_scale uint4 g64", "float16", ...
    offset_dtype: str | None
    max_abs_err: float  # max |Core ML's value - MLX's dequantization|
    bound: float        # what the tests accept: float noise of the chosen dtype at the tensor's scale
    bytes: int          # stored bytes in the package (codes + scales + offsets)

    def as_dict(self) -> dict:
        return asdict(self)


def op_name(tensor: str) -> str:
    """A MIL identifier for a bundle tensor name."""
    return tensor.replace(".", "_")


class WeightMaker:
    """Hands out MIL values for the bundle's tensors inside a program under construction."""

    def __init__(self, raw: dict[str, np.ndarray], quant: dict, precision: str):
        self.raw = raw
        self.quant = quant or {}
        self.fp32 = precision == "float32"
        self.reports: list[TensorReport] = []
        self.used: set[str] = set()
        self._made: dict[str, object] = {}

    def has(self, name: str) -> bool:
        return name in self.raw

    def vector(self, name: str, plus_one: bool = False) -> np.ndarray:
        """A float tensor (norm weight, bias) as float32 NumPy, to be folded into the graph."""
        if name not in self.raw:
            raise MlxEdgeError(f"bundle is missing tensor {name}")
        self.used.add(name)
        v = np.array(as_float32(self.raw[name]), dtype=np.float32)
        return v + np.float32(1.0) if plus_one else v

    def matrix(self, prefix: str):
        """`prefix.weight` (out, in) as a MIL value, dequantized at load time by Core ML."""
        name = f"{prefix}.weight"
        if name in self._made:
            return self._made[name]
        if name not in self.raw:
            raise MlxEdgeError(f"bundle is missing tensor {name}")
        self.used.add(name)
        if f"{prefix}.scales" in self.raw:
            var = self._affine(prefix)
        else:
            var = self._float(name)
        if var.dtype != types.fp32:  # the program is written in float32; the float16 pass folds the cast
            var = mb.cast(x=var, dtype="fp32", name=f"{op_name(name)}_fp32")
        self._made[name] = var
        return var

    def _float(self, name: str):
        w = as_float32(self.raw[name])
        dt = np.float32 if self.fp32 else np.float16
        with np.errstate(over="ignore"):
            stored = w.astype(dt)
        if not np.isfinite(stored).all():
            raise MlxEdgeError(f"{name} has values beyond float16's range; export with --compute-precision float32")
        err = float(np.max(np.abs(stored.astype(np.float32) - w))) if w.size else 0.0
        eps = 2.0 ** -24 if self.fp32 else EPS16
        bound = float(np.max(np.abs(w))) * eps if w.size else 0.0
        self.reports.append(TensorReport(name, op_name(name), np.dtype(dt).name, None, err, bound, stored.nbytes))
        return mb.const(val=stored, name=op_name(name))

    def _affine(self, prefix: str):
        name = f"{prefix}.weight"
        w, scales = self.raw[name], self.raw[f"{prefix}.scales"]
        biases = self.raw.get(f"{prefix}.biases")
        if biases is None:
            raise MlxEdgeError(f"{prefix} has scales but no biases (only MLX affine quantization is exported)")
        self.used.update({f"{prefix}.scales", f"{prefix}.biases"})
        bits, group = quant_spec(self.quant, prefix)
        if w.dtype != np.uint32 or w.ndim != 2 or w.shape[-1] * 32 // bits != scales.shape[-1] * group:
            raise MlxEdgeError(f"{prefix}: weight {w.dtype}{list(w.shape)} does not hold {bits}-bit codes "
                               f"for scales {list(scales.shape)} (group size {group})")
        q = unpack(np.asarray(w), bits)                        # (out, in) uint8 codes
        s64 = as_float32(scales).astype(np.float64)            # (out, in // group)
        b64 = as_float32(biases).astype(np.float64)
        ref = _Reference(w, scales, biases, bits, group)       # MLX's float32 weights, by row blocks
        wide = 4 if bits <= 4 else 8
        code_dt = types.np_uint4_dtype if wide == 4 else np.uint8
        with np.errstate(divide="ignore", invalid="ignore"):
            off64 = np.where(s64 != 0, -b64 / np.where(s64 != 0, s64, 1), 0.0)
        top = ref.top
        zero_ok = bool(np.all((s64 != 0) | (b64 == 0)))  # s == 0 needs w = b: no shift-scale form
        if not zero_ok:
            raise MlxEdgeError(f"{prefix}: groups with a zero scale and a non-zero bias have no shift-scale form")
        choice = None
        if not self.fp32:  # float16 scale and offset: three float16 roundings at most (q - o, *, output)
            s16, o16 = s64.astype(np.float16), off64.astype(np.float16)
            bound = 3 * EPS16 * top
            if np.isfinite(s16).all() and np.isfinite(o16).all():
                err16 = self._err(q, s16, o16, ref)
                if err16 <= bound:
                    choice = (s16, o16, err16)
        if choice is None:  # float32 scale and offset: float32 noise at the scale of w and b
            s32, o32 = s64.astype(np.float32), off64.astype(np.float32)
            bound = 4 * 2.0 ** -24 * (top + float(np.max(np.abs(b64))))
            choice = (s32, o32, self._err(q, s32, o32, ref))
            if choice[2] > bound:
                raise MlxEdgeError(f"{prefix}: shift-scale form is off by {choice[2]:.3g} (> {bound:.3g})")
        sc, off, err = choice
        nbytes = q.size * wide // 8 + sc.nbytes + off.nbytes
        form = f"shift_scale uint{wide} g{group} (bundle {bits}-bit)"
        self.reports.append(TensorReport(name, op_name(name), form, sc.dtype.name, err, bound, nbytes))
        return mb.constexpr_blockwise_shift_scale(data=q.astype(code_dt), scale=sc, offset=off,
                                                  name=op_name(name))

    @staticmethod
    def _err(q: np.ndarray, scale: np.ndarray, offset: np.ndarray, ref: "_Reference") -> float:
        """max |coremltools' own decompression - MLX's dequantization|, a block of rows at a time."""
        err = 0.0
        for rows, want in ref.blocks():
            with np.errstate(over="ignore", invalid="ignore"):
                got = constexpr_blockwise_shift_scale.decompress(q[rows], scale[rows], offset[rows])
            got = got.astype(np.float32)
            if not np.isfinite(got).all():
                return float("inf")
            err = max(err, float(np.max(np.abs(got - want))) if want.size else 0.0)
        return err

    def check_all_used(self) -> None:
        left = sorted(set(self.raw) - self.used)
        if left:
            raise MlxEdgeError(f"bundle has tensors the Core ML export does not use: {', '.join(left[:5])}")


class _Reference:
    """MLX's dequantization of one tensor, produced a block of rows at a time: memory stays at a
    few blocks, not four copies of the largest tensor (the embedding)."""

    BLOCK = 1 << 22  # weights per block

    def __init__(self, w, scales, biases, bits: int, group: int):
        self.args = (w, scales, biases, bits, group)
        self.rows = max(1, self.BLOCK // max(1, w.shape[1] * 32 // bits))
        self.top = max((float(np.max(np.abs(b))) for _, b in self.blocks() if b.size), default=0.0)

    def blocks(self):
        w, scales, biases, bits, group = self.args
        for r in range(0, w.shape[0], self.rows):
            rows = slice(r, r + self.rows)
            yield rows, dequantize(w[rows], scales[rows], biases[rows], bits, group)
