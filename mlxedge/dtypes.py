"""Float dtypes as stored: bfloat16 travels as its uint16 bit pattern (NumPy has no bfloat16)."""

from __future__ import annotations

import numpy as np

# dtype names used in recipes and mlxedge.json -> NumPy (bfloat16: uint16 bits)
NUMPY = {"float16": np.float16, "float32": np.float32, "bfloat16": np.uint16}


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit pattern (round to nearest even), as uint16."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + (np.uint32(0x7FFF) + ((u >> 16) & 1))
    return (rounded >> 16).astype(np.uint16)


def from_bf16_bits(x: np.ndarray) -> np.ndarray:
    """bfloat16 bit pattern (uint16) -> float32, exactly."""
    return (np.asarray(x, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_bf16(x) -> np.ndarray:
    """The nearest bfloat16 value of x, as float32."""
    x = np.asarray(x, dtype=np.float32)
    return from_bf16_bits(to_bf16_bits(x)).reshape(x.shape)


def as_float32(x) -> np.ndarray:
    """Stored floats as float32; uint16 arrays are bfloat16 bit patterns."""
    x = np.asarray(x)
    return from_bf16_bits(x) if x.dtype == np.uint16 else x.astype(np.float32)
