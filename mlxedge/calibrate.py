"""Calibration: run text through the NumPy backend and measure what each tensor's error costs.

Two measurements per quantizable matrix, both on the source model in float32:
1. input second moments E[x_j^2] of every linear layer (the final normed hidden state for the
   output head), recorded by wrappers around the backend's layers during a forward pass: a weight
   error in column j matters in proportion to how large input j is;
2. a probe: that one matrix alone is quantized at a probe option, the model is rerun from its block
   onward (block inputs cached) and KL(P_source || P_probe) is measured at sampled positions. This
   puts layers on one scale: the same output error costs more in some layers than in others.

A tied embedding has two uses, probed apart: the lookup (rows weighted alike) and the output head.
`joint_kl` measures sets of replaced weights together (a whole quantization plan, or part of it).
Calibration text: `mlxedge.texts.calibration_text()` (package documentation, held out from the
evaluation text) unless a file is given; windows are drawn from it with a seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import texts
from .backends import numpy as np_backend
from .backends.numpy.cache import KVCache
from .backends.numpy.weights import Fused, Linear
from .metrics import log_softmax, mean_kl
from .progress import progress
from .tokenizer import load_tokenizer

EMBED = "model.embed_tokens.weight"
# quantize(w (out, in) float32, bits, group_size, importance (in,) or None) -> dequantized w
Quantizer = Callable[[np.ndarray, int, int, "np.ndarray | None"], np.ndarray]


@dataclass
class Use:
    """One way the model uses a weight matrix, and what its probe cost."""

    kind: str  # "linear" (input x), "head" (final normed hidden state), "lookup" (embedding rows)
    importance: np.ndarray | None  # (in,) E[x_j^2]; None for the lookup
    probe: tuple[int, int] = (0, 0)  # (bits, group_size) of the probe
    kl: float = 0.0  # mean KL(P_source || P_probe) at the probe positions


@dataclass
class Calibration:
    """Per weight name (e.g. "model.layers.3.mlp.down_proj.weight"), its uses in the model."""

    uses: dict[str, list[Use]] = field(default_factory=dict)
    tokens: int = 0  # tokens in the statistics pass
    positions: int = 0  # positions at which each probe's KL is measured


def calibration_chunks(directory: str | Path, text: str, tokens: int, ctx: int, seed: int) -> list[np.ndarray]:
    """ceil(tokens / ctx) non-overlapping windows of `text`, chosen with `seed`, each led by BOS."""
    return texts.windows(load_tokenizer(directory), text, ctx, count=-(-tokens // ctx), seed=seed)


# -- the instrumented NumPy model ---------------------------------------------------------------

class _Recorder:
    """Stands in for a Linear or Fused layer: adds Σ_t x_t^2 to the sums of its weights, then calls it."""

    def __init__(self, inner, names: list[str], sums: dict[str, np.ndarray]):
        self.inner, self.names, self.sums = inner, names, sums
        self.active = True

    def __call__(self, x: np.ndarray):
        if self.active:
            s = np.einsum("ti,ti->i", x, x, dtype=np.float64)  # (in,)
            for n in self.names:
                self.sums[n] = self.sums.get(n, 0.0) + s
        return self.inner(x)


class Instrumented:
    """A NumPy model whose linear layers record input moments and can be swapped for a probe."""

    def __init__(self, directory: str | Path):
        self.model = np_backend.load(Path(directory), mode="float32")  # dense weights: probes edit them
        self.sums: dict[str, np.ndarray] = {}
        self.recorders: list[_Recorder] = []
        # weight name -> (W array (out..., in), row slice, block index)
        self.slots: dict[str, tuple[np.ndarray, slice, int]] = {}

        def wrap(obj, layer: int, seen: set) -> None:
            if id(obj) in seen:
                return
            seen.add(id(obj))
            for key, val in list(vars(obj).items()):
                if isinstance(val, Linear) and val.name is not None:
                    self.slots[f"{val.name}.weight"] = (val.w, slice(0, val.out_features), layer)
                    rec = _Recorder(val, [f"{val.name}.weight"], self.sums)
                elif isinstance(val, Fused) and val.one is not None:
                    names, start = [], 0
                    for part, n in zip(val.parts, val.sizes):
                        names.append(f"{part.name}.weight")
                        self.slots[names[-1]] = (val.one.w, slice(start, start + n), layer)
                        start += n
                    rec = _Recorder(val, names, self.sums)
                elif type(val).__module__.startswith("mlxedge.backends.numpy") and hasattr(val, "__dict__"):
                    wrap(val, layer, seen)
                    continue
                else:
                    continue
                setattr(obj, key, rec)
                self.recorders.append(rec)

        for i, block in enumerate(self.model.blocks):
            wrap(block, i, set())
        m = self.model
        tied = m.embed.table is not None and m.lm_head.w is m.embed.table
        self.head_name = EMBED if tied else f"{m.lm_head.name or 'lm_head'}.weight"
        self.embed_table: np.ndarray | None = None  # replacements (see `replace`)
        self.head_w: np.ndarray | None = None
        self._saved: dict[str, np.ndarray] = {}

    def record(self, on: bool) -> None:
        for r in self.recorders:
            r.active = on

    def names(self) -> list[str]:
        """Every quantizable matrix: the blocks' linears, the embedding, an untied head."""
        head = [self.head_name] if self.head_name != EMBED else []
        return [*self.slots, EMBED, *head]

    def weight(self, name: str) -> np.ndarray:
        """The float32 weight (out, in), read back from the loaded model."""
        m = self.model
        if name in self.slots:
            arr, sl, _ = self.slots[name]
            return arr[sl].copy()
        if name == EMBED:
            return m.embed.table
        return m.lm_head.w

    def replace(self, weights) -> None:
        """Use these (out, in) weights (a dict or (name, weight) pairs) instead of the model's,
        until `restore()`."""
        for name, w in (weights.items() if isinstance(weights, dict) else weights):
            if name in self.slots:
                arr, sl, _ = self.slots[name]
                self._saved.setdefault(name, arr[sl].copy())
                arr[sl] = w
            if name == EMBED:
                self.embed_table = w
            if name == self.head_name:
                self.head_w = np.ascontiguousarray(w, dtype=np.float32)

    def restore(self) -> None:
        for name, saved in self._saved.items():
            arr, sl, _ = self.slots[name]
            arr[sl] = saved
        self._saved.clear()
        self.embed_table = self.head_w = None

    # the model's own steps (NumpyModel.forward is built from them), with the replacements applied
    def embed(self, ids: np.ndarray, table: np.ndarray | None = None) -> np.ndarray:
        return self.model.embed_tokens(ids, table if table is not None else self.embed_table)

    def blocks(self, h: np.ndarray, start: int = 0, keep: list | None = None) -> np.ndarray:
        cache = KVCache(len(self.model.blocks))  # offset 0: the chunk is the whole sequence
        return self.model.norm(self.model.run_blocks(h, cache, start, keep))  # (T, hidden), the head's input

    def logprobs(self, hn: np.ndarray, head_w: np.ndarray | None = None) -> np.ndarray:
        """log-softmax of the logits for normed hidden states hn (P, hidden); head_w (V, hidden)."""
        return log_softmax(self.model.head(hn, head_w if head_w is not None else self.head_w))


def probe_option(shape: tuple, probe: tuple[int, int]) -> tuple[int, int]:
    bits, group = probe
    while shape[-1] % group and group > 32:
        group //= 2
    return bits, group


def calibrate(directory: str | Path, chunks: list[np.ndarray], quantize: Quantizer,
              probe: tuple[int, int] = (3, 64), positions: int = 64, probe_chunks: int = 1,
              show_progress: bool = False) -> Calibration:
    """Input moments over all `chunks`; probes over the first `probe_chunks` of them, with KL
    measured at `positions` evenly spaced positions per chunk."""
    net = Instrumented(directory)
    head_sum = 0.0
    n_tokens = 0
    cached = []  # per probe chunk: (block inputs, normed final hidden at positions, base logprobs, positions)
    for k, ids in enumerate(progress(chunks, desc="calibrate", unit="chunk", disable=not show_progress)):
        keep: list[np.ndarray] | None = [] if k < probe_chunks else None
        hn = net.blocks(net.embed(ids), 0, keep)
        head_sum = head_sum + np.einsum("ti,ti->i", hn, hn, dtype=np.float64)
        n_tokens += len(ids)
        if keep is not None:
            pos = probe_positions(len(ids), positions)
            cached.append((ids, keep, hn[pos], net.logprobs(hn[pos]), pos))
    net.record(False)

    cal = Calibration(tokens=n_tokens, positions=sum(len(c[4]) for c in cached))

    def measure(run) -> float:
        return float(np.mean([mean_kl(c[3], run(c)) for c in cached]))

    names = net.names()
    for name in progress(names, desc="probe", unit="tensor", disable=not show_progress):
        w = net.weight(name)
        uses = []
        if name in net.slots:
            arr, sl, layer = net.slots[name]
            opt = probe_option(w.shape, probe)
            saved = arr[sl].copy()
            arr[sl] = quantize(w, *opt, net.sums[name] / n_tokens)
            kl = measure(lambda c: net.logprobs(net.blocks(c[1][layer], layer)[c[4]]))
            arr[sl] = saved
            uses.append(Use("linear", (net.sums[name] / n_tokens).astype(np.float32), opt, kl))
        if name == EMBED:
            opt = probe_option(w.shape, probe)
            table = quantize(w, *opt, None)
            kl = measure(lambda c: net.logprobs(net.blocks(net.embed(c[0], table), 0)[c[4]]))
            uses.append(Use("lookup", None, opt, kl))
        if name == net.head_name:
            imp = (head_sum / n_tokens).astype(np.float32)
            opt = probe_option(w.shape, probe)
            head_w = quantize(w, *opt, imp)
            kl = measure(lambda c: net.logprobs(c[2], head_w))
            uses.append(Use("head", imp, opt, kl))
        cal.uses[name] = uses
    return cal


def probe_positions(n: int, positions: int) -> np.ndarray:
    """`positions` evenly spaced positions of a chunk of n tokens (position 0 sees only BOS)."""
    return np.unique(np.linspace(1, n - 1, min(positions, n - 1)).astype(int))


def joint_kl(directory: str | Path, chunks: list[np.ndarray], variants: list, positions: int = 64,
             net: Instrumented | None = None) -> list[float]:
    """KL(P_source || P_variant) at the probe positions of `chunks`, for each variant: replacement
    weights (a dict or an iterable of (name, (out, in) float32) pairs) applied together."""
    net = net or Instrumented(directory)
    net.record(False)
    runs = []
    for ids in chunks:
        pos = probe_positions(len(ids), positions)
        runs.append((ids, pos, net.logprobs(net.blocks(net.embed(ids))[pos])))
    out = []
    for weights in variants:
        net.replace(weights)
        try:
            out.append(float(np.mean([mean_kl(base, net.logprobs(net.blocks(net.embed(ids))[pos]))
                                      for ids, pos, base in runs])))
        finally:
            net.restore()
    return out
