"""`mlxedge eval MODEL [--reference REF] [--text FILE] [--json]`: how much a conversion costs.

Runs through the NumPy backend. The text (default: NumPy's license, `mlxedge.texts.evaluation_text`,
held out from calibration) is tokenized with MODEL's tokenizer and cut into chunks of at most
`ctx` tokens, each starting with BOS where the tokenizer has one; every other position is scored.

- perplexity: exp(mean negative log-likelihood of the next token);
- KL divergence KL(P_ref || P_model) per scored position, its mean and 99th percentile (NumPy's
  linear interpolation), and top-1 agreement (same argmax), against REF run on the same tokens;
- size on disk (the safetensors files, or the GGUF file) and bits per weight = stored bits of all
  tensors (quantized weights, scales, biases, float tensors) / number of parameters.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import modelcache, texts
from .backends import numpy as np_backend
from .errors import MlxEdgeError
from .formats.bundle import read_config
from .formats.gguf import open_gguf
from .metrics import ROWS, kl_rows, log_softmax, perplexity, token_nll
from .progress import progress
from .safetensors import stats
from .tokenizer import load_tokenizer


def open_model(path: str | Path, quiet: bool = True):
    """(bundle directory, NumPy model) for a converted directory or a .gguf file (via the cache)."""
    directory = modelcache.resolve(path, quiet=quiet)
    return directory, np_backend.load(directory)


def text_chunks(directory: Path, text: str, ctx: int) -> list[np.ndarray]:
    """Token chunks of at most `ctx` tokens, each led by BOS when the tokenizer has one."""
    return texts.windows(load_tokenizer(directory), text, ctx)


def context_length(config: dict, ctx: int | None) -> int:
    limit = int(config.get("max_position_embeddings") or 2048)
    return min(limit, ctx or 512)


@dataclass
class Reference:
    """The reference's log-probabilities on each chunk, computed once and reused per variant."""

    path: str
    chunks: list[np.ndarray]
    logprobs: list[np.ndarray]  # per chunk (T - 1, V) float32: predictions of tokens 1..T-1

    @classmethod
    def build(cls, path: str | Path, chunks: list[np.ndarray], show_progress: bool = False) -> "Reference":
        _, model = open_model(path)
        out = [log_softmax(model.forward(c)[:-1])
               for c in progress(chunks, desc="reference", unit="chunk", disable=not show_progress)]
        return cls(str(path), chunks, out)


def score(model, chunks: list[np.ndarray], reference: Reference | None = None,
          show_progress: bool = False) -> dict:
    """Perplexity (and KL / top-1 against `reference`) of a loaded NumPy model on token chunks."""
    nll, kl, agree = [], [], []
    ref_nll = []
    for k, ids in enumerate(progress(chunks, desc="eval", unit="chunk", disable=not show_progress)):
        lp = log_softmax(model.forward(ids)[:-1])  # (T-1, V): position t predicts token t+1
        if reference is not None and lp.shape[-1] != reference.logprobs[k].shape[-1]:
            raise MlxEdgeError(f"model and reference disagree on the vocabulary size "
                               f"({lp.shape[-1]} vs {reference.logprobs[k].shape[-1]})")
        targets = ids[1:]
        nll.append(token_nll(lp, targets))
        if reference is None:
            continue
        ref = reference.logprobs[k]
        ref_nll.append(token_nll(ref, targets))
        for i in range(0, len(lp), ROWS):
            r, m = ref[i: i + ROWS], lp[i: i + ROWS]
            kl.append(kl_rows(r, m))
            agree.append(r.argmax(-1) == m.argmax(-1))
    nll = np.concatenate(nll)
    out = {"tokens": int(nll.size), "chunks": len(chunks), "perplexity": perplexity(nll)}
    if reference is not None:
        kl = np.maximum(np.concatenate(kl), 0.0)  # rounding can leave -1e-9 where P == Q
        out.update(reference_perplexity=perplexity(np.concatenate(ref_nll)),
                   kl_mean=float(kl.mean()), kl_p99=float(np.percentile(kl, 99)),
                   top1=float(np.concatenate(agree).mean()))
    return out


def weight_stats(path: str | Path) -> dict:
    """size_bytes (weights on disk), parameters, bits_per_weight (stored bits / parameters)."""
    path = Path(path)
    if path.is_file():  # GGUF: the file, and its tensors' own sizes
        _, tensors = open_gguf(path)
        n = sum(t.n_elements for t in tensors)
        bits = sum(t.n_bytes * 8 for t in tensors)
        return {"size_bytes": path.stat().st_size, "parameters": n, "bits_per_weight": bits / max(n, 1)}
    return stats(path, read_config(path).get("quantization") or {})


def evaluate(model: str | Path, reference: str | Path | Reference | None = None, text: str | None = None,
             ctx: int | None = None, show_progress: bool = False) -> dict:
    """Evaluate the model at `model` (directory or .gguf) on `text` (default: the evaluation text),
    against `reference` (a path, or a `Reference` built once for several models)."""
    directory, m = open_model(model, quiet=not show_progress)
    if isinstance(reference, Reference):
        chunks = reference.chunks
    else:
        chunks = text_chunks(directory, text if text is not None else texts.evaluation_text(),
                             context_length(m.config, ctx))
        if reference is not None:
            reference = Reference.build(reference, chunks, show_progress)
    result = {"model": str(model), "reference": reference.path if reference else None,
              "ctx": max(len(c) for c in chunks)}
    result.update(score(m, chunks, reference, show_progress))
    result.update(weight_stats(model))
    return result


def markdown_table(results: list[dict], names: list[str] | None = None) -> str:
    """One row per result: size, bits/weight, perplexity, KL mean / p99, top-1."""
    has_ref = any(r.get("kl_mean") is not None for r in results)
    head = ["model", "size (MB)", "bits/weight", "perplexity"]
    if has_ref:
        head += ["KL mean", "KL p99", "top-1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(results):
        row = [names[i] if names else r["model"], f"{r['size_bytes'] / 1e6:.2f}",
               f"{r['bits_per_weight']:.3f}", f"{r['perplexity']:.3f}"]
        if has_ref:
            row += [f"{r['kl_mean']:.4f}", f"{r['kl_p99']:.4f}", f"{100 * r['top1']:.1f}%"] \
                if r.get("kl_mean") is not None else ["", "", ""]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a converted model directory or a .gguf file")
    p.add_argument("--reference", default=None,
                   help="compare against this model (directory or .gguf): KL divergence, top-1 agreement")
    p.add_argument("--text", default=None, help="a UTF-8 text file (default: NumPy's license text)")
    p.add_argument("--ctx", type=int, default=None, help="tokens per chunk (default 512, at most the model's context)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    text = None
    if args.text is not None:
        try:
            text = Path(args.text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise MlxEdgeError(f"cannot read --text {args.text}: {e}") from None
    show = not args.json and sys.stderr.isatty()
    result = evaluate(args.model, args.reference, text, args.ctx, show_progress=show)
    result["text"] = args.text or "numpy LICENSE.txt (mlxedge.texts.evaluation_text)"
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(markdown_table([result]))
        print(f"\n{result['tokens']} tokens scored in {result['chunks']} chunk(s) of at most {result['ctx']}; "
              f"text: {result['text']}")
    return 0
