"""A small NumPy interpreter of the MIL ops the Core ML export uses (a test utility).

Core ML's runtime exists only on Apple platforms; this runs the *saved* package instead: the
.mlpackage is read back into a MIL program with coremltools (milproto loader) and executed op by
op. Semantics follow coremltools' op definitions (coremltools/converters/mil/mil/ops/defs/); each
op computes in float32 (integers as int64) and rounds its result to the op's output dtype, so a
float16 program is emulated with float16 storage between ops. constexpr ops are decompressed by
coremltools itself (`materialized_val_inference`). States persist across calls in `Program.states`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

_NP = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "int16": np.int16, "uint16": np.uint16,
       "int8": np.int8, "uint8": np.uint8, "bool": np.bool_, "int64": np.int64}


def load(package: str | Path):
    """The saved package's MIL program ('main' function) and its spec."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
    m = ct.models.MLModel(str(package), skip_model_load=True)
    spec = m.get_spec()
    return milproto_load(spec, spec.specificationVersion, file_weights_dir=m.weights_dir), spec


def _dtype(var):
    from coremltools.converters.mil.mil import types
    dt = var.dtype
    if types.is_tensor(var.sym_type) or types.is_scalar(var.sym_type):
        return types.nptype_from_builtin(dt)
    return None


class Program:
    """Runs one MIL function; `states` maps state names to float16 arrays (zeros at start)."""

    def __init__(self, package: str | Path):
        from coremltools.converters.mil.mil import types
        prog, self.spec = load(package)
        self.func = prog.functions["main"]
        self.ops = list(self.func.operations)
        self.states = {}
        for name, var in self.func.inputs.items():
            if types.is_state(var.sym_type):
                wrapped = var.sym_type.wrapped_type()
                self.states[name] = np.zeros(wrapped.get_shape(), types.nptype_from_builtin(wrapped.get_primitive()))
        self.op_types = sorted({op.op_type for op in self.ops})
        self._consts = {}

    def reset(self) -> None:
        for v in self.states.values():
            v[...] = 0

    def __call__(self, **inputs) -> dict[str, np.ndarray]:
        env = dict(inputs)
        for op in self.ops:
            outs = self._run(op, env)
            if not isinstance(outs, (list, tuple)):
                outs = [outs]
            for var, val in zip(op.outputs, outs):
                dt = _dtype(var)
                val = np.asarray(val)
                env[var.name] = val.astype(dt, copy=False) if dt is not None else val
        return {v.name: env[v.name] for v in self.func.outputs}

    def _val(self, x, env):
        if x is None:
            return None
        if isinstance(x, (list, tuple)):
            return [self._val(v, env) for v in x]
        if x.name in env:
            return env[x.name]
        if x.val is not None:
            return np.asarray(x.val)
        raise KeyError(f"no value for {x.name}")

    def _run(self, op, env):
        t = op.op_type
        if t == "const":
            return op.outputs[0].val
        if t.startswith("constexpr_"):
            if op.name not in self._consts:
                self._consts[op.name] = op.materialized_val_inference()
            return self._consts[op.name]
        f = getattr(self, f"op_{t}", None)
        if f is None:
            raise NotImplementedError(f"MIL op {t} ({op.name})")
        if t == "read_state":
            return f(op, {})
        a = {k: self._val(v, env) for k, v in op.inputs.items() if not (t == "coreml_update_state" and k == "state")}
        if t == "coreml_update_state":
            return f(op, a)
        return f(**a)

    # -- states (ops/defs/iOS18/states.py, coreml_dialect/ops.py) ---------------------------------
    def op_read_state(self, op, a):
        return self.states[op.inputs["input"].name].copy()

    def op_coreml_update_state(self, op, a):
        name = op.inputs["state"].name
        self.states[name] = np.asarray(a["value"]).astype(self.states[name].dtype)
        return self.states[name].copy()

    # -- elementwise (elementwise_binary.py, elementwise_unary.py, activation.py) ------------------
    def op_add(self, x, y): return _f(x) + _f(y)
    def op_sub(self, x, y): return _f(x) - _f(y)
    def op_mul(self, x, y): return _f(x) * _f(y)
    def op_real_div(self, x, y): return _f(x) / _f(y)
    def op_greater(self, x, y): return _f(x) > _f(y)
    def op_greater_equal(self, x, y): return _f(x) >= _f(y)
    def op_less(self, x, y): return _f(x) < _f(y)
    def op_less_equal(self, x, y): return _f(x) <= _f(y)
    def op_equal(self, x, y): return _f(x) == _f(y)
    def op_logical_and(self, x, y): return np.logical_and(x, y)
    def op_logical_not(self, x): return np.logical_not(x)
    def op_select(self, cond, a, b): return np.where(cond, _f(a), _f(b))
    def op_tanh(self, x): return np.tanh(_f(x))
    def op_sqrt(self, x): return np.sqrt(_f(x))
    def op_exp(self, x): return np.exp(_f(x))
    def op_identity(self, x): return x
    def op_silu(self, x): x = _f(x); return x / (1.0 + np.exp(-x))
    def op_sigmoid(self, x): return 1.0 / (1.0 + np.exp(-_f(x)))

    def op_rsqrt(self, x, epsilon=1e-12):
        return 1.0 / np.sqrt(_f(x) + _f(epsilon))

    def op_gelu(self, x, mode="EXACT"):
        x = _f(x)
        if str(mode) == "TANH_APPROXIMATION":
            return 0.5 * x * (1.0 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
        if str(mode) == "SIGMOID_APPROXIMATION":
            return x / (1.0 + np.exp(-1.702 * x))
        from scipy.special import erf  # pragma: no cover
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2)))

    def op_cast(self, x, dtype):
        return np.asarray(x).astype(_NP[str(dtype)])

    def op_softmax(self, x, axis=-1):
        x = _f(x)
        x = x - x.max(axis=int(axis), keepdims=True)
        e = np.exp(x)
        return e / e.sum(axis=int(axis), keepdims=True)

    # -- reductions, linear algebra (reduction.py, linear.py) --------------------------------------
    def op_reduce_mean(self, x, axes=None, keep_dims=False):
        return np.mean(_f(x), axis=None if axes is None else tuple(int(a) for a in axes), keepdims=bool(keep_dims))

    def op_reduce_sum(self, x, axes=None, keep_dims=False):
        return np.sum(_f(x), axis=None if axes is None else tuple(int(a) for a in axes), keepdims=bool(keep_dims))

    def op_matmul(self, x, y, transpose_x=False, transpose_y=False):
        x, y = _f(x), _f(y)
        if transpose_x:
            x = np.swapaxes(x, -1, -2)
        if transpose_y:
            y = np.swapaxes(y, -1, -2)
        return x @ y

    def op_linear(self, x, weight, bias=None):
        y = _f(x) @ _f(weight).T
        return y + _f(bias) if bias is not None else y

    # -- shapes and indexing (tensor_transformation.py, tensor_operation.py, scatter_gather.py) ----
    def op_shape(self, x): return np.array(np.shape(x), np.int32)

    def op_reshape(self, x, shape):
        shape = [int(s) for s in shape]
        shape = [np.shape(x)[i] if s == 0 else s for i, s in enumerate(shape)]  # 0: copy that dim
        return np.reshape(x, shape)

    def op_transpose(self, x, perm): return np.transpose(x, [int(p) for p in perm])

    def op_expand_dims(self, x, axes):
        out = np.asarray(x)
        rank = out.ndim + len(axes)
        for ax in sorted(int(a) % rank for a in axes):
            out = np.expand_dims(out, ax)
        return out

    def op_squeeze(self, x, axes=None):
        x = np.asarray(x)
        return np.squeeze(x) if axes is None else np.squeeze(x, tuple(int(a) for a in axes))

    def op_concat(self, values, axis, interleave=False):
        assert not interleave
        return np.concatenate([np.atleast_1d(v) for v in values], axis=int(axis))

    def op_stack(self, values, axis): return np.stack(values, axis=int(axis))

    def op_tile(self, x, reps): return np.tile(x, [int(r) for r in reps])

    def op_range_1d(self, start, end, step):
        return np.arange(int(start), int(end), int(step))

    def op_split(self, x, num_splits=None, split_sizes=None, axis=0):
        axis = int(axis)
        if split_sizes is not None:
            cuts = np.cumsum([int(s) for s in split_sizes])[:-1]
            return np.split(x, cuts, axis=axis)
        return np.split(x, int(num_splits), axis=axis)

    def op_gather(self, x, indices, axis=0, batch_dims=0, validate_indices=False):
        assert int(batch_dims) == 0
        x = np.asarray(x)
        idx = np.asarray(indices).astype(np.int64)
        idx = np.where(idx < 0, idx + x.shape[int(axis)], idx)
        return np.take(x, idx, axis=int(axis))

    @staticmethod
    def _slices(shape, begin, end, stride, begin_mask, end_mask, squeeze_mask):
        rank = len(shape)
        stride = [1] * rank if stride is None else [int(s) for s in stride]
        begin_mask = [False] * rank if begin_mask is None else list(begin_mask)
        end_mask = [False] * rank if end_mask is None else list(end_mask)
        squeeze_mask = [False] * rank if squeeze_mask is None else list(squeeze_mask)
        idx = []
        for i in range(rank):
            b, e, s = int(begin[i]), int(end[i]), stride[i]
            if squeeze_mask[i]:
                idx.append(b if b >= 0 else b + shape[i])
                continue
            b = None if begin_mask[i] else b
            e = None if end_mask[i] else e
            idx.append(slice(b, e, s))
        return tuple(idx)

    def op_slice_by_index(self, x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
        x = np.asarray(x)
        return x[self._slices(x.shape, begin, end, stride, begin_mask, end_mask, squeeze_mask)].copy()

    def op_slice_update(self, x, update, begin, end, stride=None, begin_mask=None, end_mask=None,
                        squeeze_mask=None):
        out = np.array(x, copy=True)
        sl = self._slices(out.shape, begin, end, stride, begin_mask, end_mask, squeeze_mask)
        if out[sl].shape != np.shape(update):
            raise ValueError(f"slice_update: slice {out[sl].shape} vs update {np.shape(update)}")
        out[sl] = update
        return out


def _f(x):
    """float32 for floats (ops compute in float32), int64 for integers."""
    x = np.asarray(x)
    if x.dtype.kind == "f":
        return x.astype(np.float32)
    if x.dtype.kind in "iu":
        return x.astype(np.int64)
    return x
