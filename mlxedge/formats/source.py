"""What every reader (GGUF, ONNX, Hugging Face, bundle) hands to the conversion pipeline."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from ..files import pump
from ..quant.affine import Affine

FLOAT_TYPES = ("F32", "F16", "BF16")


@dataclass
class SourceTensor:
    """One parameter, under its mlx-lm name, loaded only when asked.

    `dense()` gives float32 values; `affine()` gives the exact MLX affine form of the stored values
    when MLX can express it (else None); `native()` gives float tensors in their stored dtype.
    `rows(a, b)`, where the reader can read part of a matrix, is the same tensor cut to rows
    [a, b): the pipeline converts large matrices a block of rows at a time through it.
    """

    name: str
    shape: tuple[int, ...]  # numpy order: (out, in) for matrices
    src_type: str  # "F32", "F16", "BF16", a GGML type name ("Q4_K"), or an ONNX encoding name
    dense: Callable[[], np.ndarray]
    affine: Optional[Callable[[], Optional[Affine]]] = None
    nbytes: int = 0  # bytes this tensor takes in the source file
    rows: Optional[Callable[[int, int], "SourceTensor"]] = None

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Source:
    """A model read from some format, ready to be converted."""

    path: Path
    format: str  # "gguf" | "onnx" | "hf" | "bundle"
    config: dict  # Hugging Face config.json for mlx-lm, without "quantization"
    tensors: Callable[[], Iterator[SourceTensor]]  # a fresh lazy stream each call
    tokenizer_files: dict[str, dict] = field(default_factory=dict)  # filename -> JSON
    generation_config: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # source facts for mlxedge.json / inspect
    float_dtype: str = "float16"  # dtype for float tensors that need a cast

    def sha256(self) -> str:
        h = hashlib.sha256()
        files = [self.path] if self.path.is_file() else sorted(p for p in self.path.iterdir() if p.is_file())
        for p in files:
            with open(p, "rb") as f:
                pump(f, h)
        return h.hexdigest()
