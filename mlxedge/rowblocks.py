"""Large matrices a block of rows at a time: conversion memory bounded by a block, not a tensor.

A row-major tensor's bytes are its row blocks' bytes in order, and every per-value step of the
pipeline works within a row (GGML blocks never span rows, MLX groups run along a row), so
converting rows [a, b) and writing the results one after the other gives the bytes the whole
tensor would (`BundleWriter.add_blocks`). Two things belong to the whole tensor:

- choices made from all its values (float16 or float32 for a lossless float, float16 scales
  unless one overflows, lowbit's smallest form...): every block must make the same one, else the
  tensor is converted again whole (nothing of the blocked attempt stays written);
- the error statistics in mlxedge.json: the max is the max of the blocks' maxima, and the RMS is
  NumPy's float32 `np.mean(err * err)`, whose pairwise summation `PairwiseSum` rebuilds from the
  blocks bit for bit, so mlxedge.json is the same too.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from .quant import lowbit
from .quant.search import dequantize as dequantize_affine
from .quant.search import quantize_search

WORKERS = min(4, os.cpu_count() or 1)  # row blocks converted at once: NumPy's loops release the GIL
BLOCK_VALUES = 1 << 22  # values per row block: 16 MiB in float32, a few times that in temporaries
PW_BLOCKSIZE = 128  # NumPy sums runs of up to this many values unsplit (8 accumulators)
ERROR_KEYS = ("max_abs_err", "rms_err")  # the record fields merged across blocks


class _Differs(Exception):
    """Two blocks of one tensor made different per-tensor choices."""


class _Lowbit(Exception):
    """The tensor goes to lowbit's smallest form (a choice over the whole tensor): `lowbit_blocks`."""

    def __init__(self, scale_dtype: str, tau: float):
        self.scale_dtype, self.tau = scale_dtype, tau


class PairwiseSum:
    """`np.add.reduce` of a contiguous 1-D array of n values, bit for bit, fed piece by piece.

    NumPy sums pairwise (numpy/_core/src/umath/loops_utils.h.src, `pairwise_sum`): a run of at
    most 128 values in one unrolled loop, a longer one as the sum of its first
    n2 = n // 2 - (n // 2) % 8 values and the rest. A node of that tree inside one piece is
    `np.add.reduce` of that slice; a node across pieces is split as NumPy splits it, down to nodes
    inside one piece or runs of <= 128 values, which are summed from a copy of those values.
    """

    def __init__(self, n: int, starts: list[int]):
        self.n = n
        self.starts = sorted(set(starts) | {0})  # where the pieces begin
        self.leaves = list(self._leaves(0, n))
        self.sums: dict[tuple[int, int], np.generic] = {}
        self.done = 0  # leaves summed
        self.pos = 0  # values seen
        self.tail = np.empty(0, np.float32)  # the last <= PW_BLOCKSIZE values seen

    def _piece(self, i: int) -> int:
        return bisect.bisect_right(self.starts, i) - 1

    def _split(self, n: int) -> int:
        n2 = n // 2
        return n2 - n2 % 8

    def _leaves(self, lo: int, n: int):
        if n <= PW_BLOCKSIZE or self._piece(lo) == self._piece(lo + n - 1):
            yield lo, n
            return
        n2 = self._split(n)
        yield from self._leaves(lo, n2)
        yield from self._leaves(lo + n2, n - n2)

    def add(self, piece: np.ndarray) -> None:
        """The next piece (flat, contiguous, the sum's dtype), starting where the last one ended."""
        base, end = self.pos, self.pos + piece.size
        while self.done < len(self.leaves) and sum(self.leaves[self.done]) <= end:
            lo, n = self.leaves[self.done]
            if lo >= base:
                vals = piece[lo - base: lo - base + n]
            else:  # a short run across pieces
                vals = np.concatenate([self.tail[self.tail.size - (base - lo):], piece[: lo + n - base]])
            self.sums[lo, n] = np.add.reduce(vals)
            self.done += 1
        self.tail = np.concatenate([self.tail, piece[-PW_BLOCKSIZE:]])[-PW_BLOCKSIZE:]
        self.pos = end

    def total(self) -> np.generic:
        if self.pos != self.n:
            raise ValueError(f"{self.pos} of {self.n} values summed")

        def node(lo: int, n: int):
            s = self.sums.get((lo, n))
            if s is not None:
                return s
            n2 = self._split(n)
            return node(lo, n2) + node(lo + n2, n - n2)  # in the sum's dtype, as NumPy adds

        return node(0, self.n)


def rms(sq: PairwiseSum) -> float:
    """`float(np.sqrt(np.mean(e * e)))` from the pairwise sum of e * e (np.mean divides the
    float32 sum by an intp count)."""
    total = sq.total()
    return float(np.sqrt(total.dtype.type(total / np.intp(sq.n))))


def convert(t, writer, convert_block: Callable) -> tuple[dict, tuple | None, int] | None:
    """Convert and write the matrix `t` (a SourceTensor) in row blocks of ~BLOCK_VALUES values.

    `convert_block(part, errors)` is the pipeline's conversion of one block (a SourceTensor),
    calling `errors(err)` with the error array behind its record's statistics. Returns (record,
    (bits, group) or None, bytes written), or None when `t` is small, cannot be read by rows, or
    its blocks disagree on a per-tensor choice; then nothing of `t` was written.
    """
    if t.rows is None or len(t.shape) != 2 or t.numel <= BLOCK_VALUES:
        return None
    rows, cols = t.shape
    step = max(1, BLOCK_VALUES // cols)
    starts = list(range(0, rows, step))
    sq = PairwiseSum(rows * cols, [a * cols for a in starts])
    first: dict = {}
    held: list[list[np.ndarray]] = []  # per further array (scales, biases): its blocks
    biggest, nbytes = [np.float32(0)], [0]

    def convert_rows(a: int):  # in a worker thread: nothing shared is touched
        errs: list[np.ndarray] = []
        arrays, record, qspec = convert_block(t.rows(a, min(a + step, rows)), errs.append)
        squares = None
        if len(errs) == 1:
            e = np.ascontiguousarray(errs[0], np.float32).reshape(-1)
            squares = (e * e, e.max())
        return arrays, record, qspec, len(errs), squares

    def weight_blocks():
        # the first block alone: it may send the tensor to lowbit_blocks before others are begun
        done = itertools.chain([convert_rows(starts[0])], ordered(convert_rows, starts[1:]))
        for arrays, record, qspec, n_errs, squares in done:
            layout = [(name, arr.dtype, arr.shape[1:], st) for name, arr, st in arrays]
            plain = {k: v for k, v in record.items() if k not in ERROR_KEYS}
            if not first:
                first.update(record=record, plain=plain, qspec=qspec, layout=layout)
                held.extend([] for _ in arrays[1:])
            elif (plain, qspec, layout) != (first["plain"], first["qspec"], first["layout"]):
                raise _Differs
            if "source_noise" in record and not first.get("checked"):
                raise _Lowbit({np.float32: "float32", np.uint16: "bfloat16"}.get(arrays[1][1].dtype.type, "float16"),
                              record["tau"])
            first["checked"] = True
            if any(k in record for k in ERROR_KEYS):
                if n_errs != 1:  # statistics this module cannot merge
                    raise _Differs
                sq.add(squares[0])
                biggest[0] = max(biggest[0], squares[1])
            for store, (_, arr, _) in zip(held, arrays[1:]):
                store.append(arr)
                nbytes[0] += arr.nbytes
            nbytes[0] += arrays[0][1].nbytes
            yield arrays[0][1]

    blocks = weight_blocks()
    try:
        head = [next(blocks)]  # the first block says the weight's safetensors dtype
        name, _, _, st = first["layout"][0]
        writer.add_blocks(name, rows, _drain(head, blocks), st)
    except _Differs:
        return None
    except _Lowbit as e:
        return lowbit_blocks(t, writer, first["layout"], e.scale_dtype, step, e.tau)
    for (name, _, _, st), parts in zip(first["layout"][1:], held):
        writer.add_blocks(name, rows, parts, st)
        parts.clear()
    record = dict(first["record"])
    if "rms_err" in record:
        record["max_abs_err"], record["rms_err"] = float(biggest[0]), rms(sq)
    return record, first["qspec"], nbytes[0]


def ordered(fn: Callable, items: list):
    """fn(item) for each item, in order, computed up to WORKERS at a time in threads; at most
    WORKERS + 1 are running or waiting for the consumer. Abandoned early, the rest is cancelled."""
    if WORKERS == 1 or len(items) < 2:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="rowblocks")
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > WORKERS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _drain(head: list, rest):
    """head's item, then rest's, holding none of them once handed on."""
    yield head.pop()
    yield from rest


class _Rejected(Exception):
    """A lowbit candidate missed the criterion: its blocks are taken back."""


def lowbit_blocks(t, writer, layout, scale_dtype: str, step: int, tau: float = lowbit.TAU) -> tuple[dict, tuple, int]:
    """`lowbit.choose` for a matrix read a block of rows at a time, with the same choice, bytes
    and statistics: σ_src and every candidate's RMS are float64 means, rebuilt by PairwiseSum;
    the row sample is the same rows; `quantize_search` works row by row. Each candidate tried in
    full is written as it is quantized and taken back if it misses the criterion."""
    rows, cols = t.shape
    size, reach, with_min = lowbit.GRIDS[t.src_type]
    starts = list(range(0, rows, step))

    def squared_steps(a: int) -> np.ndarray:
        w = t.rows(a, min(a + step, rows)).dense()
        x = w.reshape(len(w), cols // size, size)
        # max/min in float32, then float64: the same values as lowbit.source_noise's float64 ones
        extent = (x.max(-1).astype(np.float64) - x.min(-1)) if with_min else np.abs(x).max(-1).astype(np.float64)
        st = extent / reach
        return (st * st).reshape(-1)

    steps = PairwiseSum(rows * cols // size, [a * cols // size for a in starts])
    for piece in ordered(squared_steps, starts):  # σ_src as lowbit.source_noise computes it
        steps.add(piece)
    total = steps.total()
    noise = float(np.sqrt(total / np.intp(steps.n) / 12))
    limit = tau * noise
    sampled = range(rows)[lowbit.row_sample(rows)]
    sample = np.concatenate([t.rows(i, i + 1).dense() for i in sampled])
    names = [name for name, _, _, _ in layout]
    for bits, group, last in lowbit.shortlist(sample, limit, scale_dtype):
        sq = PairwiseSum(rows * cols, [a * cols for a in starts])
        held: tuple[list, list] = ([], [])
        biggest = [np.float32(0)]
        result: dict = {}

        def quantize_rows(a: int, bits=bits, group=group):
            w = t.rows(a, min(a + step, rows)).dense()
            aff = quantize_search(w, bits, group, None, scale_dtype)
            back = dequantize_affine(aff)
            d = (back - w).astype(np.float64)
            return aff.packed(), aff.scales, aff.biases, (d * d).reshape(-1), np.abs(back - w).max()

        def packed():
            for weight, scales, biases, squares, most in ordered(quantize_rows, starts):
                sq.add(squares)
                biggest[0] = max(biggest[0], most)
                held[0].append(scales)
                held[1].append(biases)
                yield weight
            err = float(np.sqrt(sq.total() / np.intp(sq.n)))
            if not (err <= limit or last):
                raise _Rejected
            result["err"] = err

        try:
            writer.add_blocks(names[0], rows, packed())
        except _Rejected:
            continue
        nbytes = rows * cols * bits // 8 + sum(p.nbytes for parts in held for p in parts)
        for name, parts in zip(names[1:], held):
            writer.add_blocks(name, rows, parts)
        err = result["err"]
        ratio = err / noise if noise > 0 else (0.0 if err == 0 else np.inf)
        record = {"source": t.src_type, "target": f"affine{bits}g{group}", "max_abs_err": float(biggest[0]),
                  "rms_err": err, "source_noise": noise, "err_ratio": round(ratio, 4), "tau": tau}
        return record, (bits, group), nbytes
    raise AssertionError("unreachable: the last candidate is always taken")

