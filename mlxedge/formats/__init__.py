"""Readers (GGUF, ONNX, Hugging Face checkpoints, bundles) and the bundle writer.

`open_source(path)` picks the reader by what is at `path`; every reader returns a `Source`
(config, a lazy tensor stream under mlx-lm names, tokenizer files) and ends with the shared
completeness check (`mlxedge.archs.check`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MlxEdgeError
from .gguf import read_gguf
from .hf import read_hf
from .onnx import read_onnx
from .source import Source, SourceTensor

__all__ = ["open_source", "Source", "SourceTensor", "read_gguf", "read_hf", "read_onnx"]


def open_source(path: str | Path) -> Source:
    """Read any supported source: a .gguf file, an ONNX export folder/file, an HF checkpoint or a bundle."""
    path = Path(path)
    if not path.exists():
        raise MlxEdgeError(f"{path} does not exist")
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return read_gguf(path)
        if path.suffix == ".onnx":
            return read_onnx(path)
        raise MlxEdgeError(f"{path} is not a GGUF file (bad magic {magic!r}) nor an .onnx model")
    if (path / "genai_config.json").exists() or any(path.glob("*.onnx")) or (path / "onnx").is_dir():
        return read_onnx(path)
    if (path / "config.json").exists() and any(path.glob("*.safetensors")):
        return read_hf(path)
    raise MlxEdgeError(f"{path}: no GGUF, ONNX or safetensors model found there")
