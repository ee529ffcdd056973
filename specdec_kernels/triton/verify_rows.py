"""Multi-program row statistics for the Triton verify walk (issue 15, item 4).

The walk in sampling.py runs one program per request, so at small batch it
leaves almost every SM idle while it streams each visited row serially. The
pre-pass here spreads the row work over a 2-D grid (target rows x chunks of
the vocabulary) and leaves the walk only the per-row folds:

  launch A (every mode): per chunk, the max logit (NaN read as -inf), its
    lowest index, and a bad flag (NaN; for probabilities also a negative
    value) -> part_max / part_idx / part_bad [R, C].
  launch B, phase 1 (sampled modes): each program first folds its row's C
    maxima (max; no rounding, so any order gives the same bits), takes the
    temperature t of the row's request (a binary search in the row indptr),
    m = max(x) / t, and writes its chunk's sum of exp(z - m) (float64, as
    the walk sums) and how many of those are > 0 -> part_sum / part_cnt
    [R, C]; and owner[r] = that request (-1 where the row is invalid, the
    request is greedy, or it filters with top-k / top-p: its walk sums only
    the survivors, so these programs return without reading the row).
  launch B, phase 2 (typical only): folds part_sum into the row's float32
    total and writes its chunk's sum of p log(p + 1e-5) -> part_ent [R, C].

The walk folds a visited row's C partials in a fixed order (tl.sum over the
chunk axis, a fixed tree): the argmax is the lowest index among the chunks
attaining the max, as the serial scan's lowest-index rule gives; the max and
the count are exact; the float64 sums differ from the serial pass's only in
the grouping of float64 additions (well below a float32 ulp of the total).
Partial sums are taken relative to the row's true max, not each chunk's own
max: an online (chunk-max) rescale would round each term twice and could
flip which tiny terms underflow to 0, changing the count the rejection walk
keeps (the last token left has r = 1 exactly) -- so the sums cost a second
read of each row, in parallel, instead of one.

Cost: every target row is read once (greedy, and rejection with filters)
or twice (rejection without; three times for typical) even if the walk
never visits it, where the serial walk
reads only the rows it visits (but each of them 2+ times, one SM per
request, and one SM streams a row at a small fraction of the GPU's
bandwidth). So the pre-pass is used only when it pays (``use_row_pass``):
  - it reads at most 2 rows per SM in all (R x reads <= 2 x SMs): about the
    time one SM takes to stream a single row, which every walk spends at
    least; e.g. on 132 SMs, rejection over 8-token chains up to B = 14, or
    the 64-node tree at B = 1-2, but not the 64-node tree at B = 8, where
    the pre-pass would read 64 rows per request and the walk reads ~5; or
  - greedy (argmax only, one read) with at most 8 rows per request (chains,
    small trees), where the walk visits most rows anyway;
otherwise the walk scans its rows itself, as before. The constants are
estimates, not yet measured on a GPU. SPECDEC_TRITON_VERIFY_ROWS = multi |
single forces either path (tests, benchmarks).

Chunks: C = ceil(PROGRAMS_PER_SM * SMs / R) clamped to [1, blocks per row],
so a small batch still launches ~4 programs per SM; each chunk is a whole
number of blocks, one wide tl.load each (8 elements per thread: BLOCK_V of
the walk, down to 256 elements on one warp when a row needs more chunks).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

PROGRAMS_PER_SM = 4
DEFAULT_SMS = 132  # an H100 SXM, when the tensors are not on a GPU (interpreter)
GREEDY_ROWS_PER_REQUEST = 8
ROW_READS_PER_SM = 2
MIN_BLOCK = 256  # elements per load of the pre-pass: 8 per thread of one warp (16 B of bf16)
_BIG = tl.constexpr(1 << 30)


@triton.jit
def _exp(x, LIBDEVICE: tl.constexpr):
    # tl.exp is ex2.approx on NVIDIA GPUs; the other backends use expf. (sampling.py uses these too.)
    if LIBDEVICE:
        y = libdevice.exp(x)
    else:
        y = tl.exp(x)
    return y


@triton.jit
def _log(x, LIBDEVICE: tl.constexpr):
    if LIBDEVICE:
        y = libdevice.log(x)
    else:
        y = tl.log(x)
    return y


@triton.jit
def _chunk_max_kernel(logits_ptr, logits_stride, part_max_ptr, part_idx_ptr, part_bad_ptr, V, CHUNK, C,
                      PROBS: tl.constexpr, BLOCK_V: tl.constexpr):
    """Launch A: max (NaN as -inf), lowest index of it, bad-value count of one chunk."""
    r = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    row_ptr = logits_ptr + r * logits_stride
    lo = c * CHUNK
    hi = tl.minimum(lo + CHUNK, V)
    best = tl.full([], float("-inf"), tl.float32)
    idx = tl.full([], _BIG, tl.int32)
    bad = tl.full([], 0, tl.int32)
    for s in range(lo, hi, BLOCK_V):
        offs = s + tl.arange(0, BLOCK_V)
        # CHUNK is a whole number of blocks, so only V cuts a block short; a
        # mask on V (divisible by 16 at real sizes) keeps the loads vectorised.
        inside = offs < V
        x = tl.load(row_ptr + offs, mask=inside, other=float("-inf")).to(tl.float32)
        wrong = x != x
        if PROBS:
            wrong = wrong | ((x < 0.0) & inside)
        bad += tl.sum(wrong.to(tl.int32), 0)
        x = tl.where(x != x, float("-inf"), x)
        cm = tl.max(x, 0)
        ci = tl.min(tl.where((x == cm) & inside, offs, _BIG), 0)
        better = (cm > best) | (idx == _BIG)
        idx = tl.where(better, ci, idx)
        best = tl.where(better, cm, best)
    out = r * C + c
    tl.store(part_max_ptr + out, best)
    tl.store(part_idx_ptr + out, idx)
    tl.store(part_bad_ptr + out, bad)


@triton.jit
def fold_max(part_max_ptr, part_idx_ptr, part_bad_ptr, row, C, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr,
             BLOCK_C: tl.constexpr):
    """-> (argmax, lowest index on ties; max logit; valid) of a row from its
    chunk partials: what the walk's serial scan (sampling._scan) returns."""
    offs = tl.arange(0, BLOCK_C)
    inside = offs < C
    base = row.to(tl.int64) * C
    pm = tl.load(part_max_ptr + base + offs, mask=inside, other=float("-inf"))
    pi = tl.load(part_idx_ptr + base + offs, mask=inside, other=_BIG)
    best = tl.max(pm, 0)
    idx = tl.min(tl.where((pm == best) & inside, pi, _BIG), 0)
    nans = tl.sum(tl.load(part_bad_ptr + base + offs, mask=inside, other=0), 0)
    if PROBS:
        best = _log(best, LIBDEVICE)
    valid = (nans == 0) & (best > float("-inf")) & (best < float("inf"))
    return idx, best, valid


@triton.jit
def fold_sum(part_ptr, row, C, BLOCK_C: tl.constexpr):
    """The float64 sum of a row's chunk partials, in a fixed order."""
    offs = tl.arange(0, BLOCK_C)
    return tl.sum(tl.load(part_ptr + row.to(tl.int64) * C + offs, mask=offs < C, other=0.0), 0)


@triton.jit
def fold_count(part_ptr, row, C, BLOCK_C: tl.constexpr):
    offs = tl.arange(0, BLOCK_C)
    return tl.sum(tl.load(part_ptr + row.to(tl.int64) * C + offs, mask=offs < C, other=0), 0)


@triton.jit
def _request_of_row(rows_ptr, r, B):
    """The last request b in [0, B) with rows_ptr[b] <= r (its rows are
    rows_ptr[b]:rows_ptr[b + 1] when the indptr is non-decreasing; the walk
    checks owner before trusting it, so a malformed indptr only costs it a scan)."""
    lo = tl.full([], 0, tl.int32)
    hi = B - 1
    while lo < hi:
        mid = lo + (hi - lo + 1) // 2
        if tl.load(rows_ptr + mid).to(tl.int64) <= r:
            lo = mid
        else:
            hi = mid - 1
    return lo


@triton.jit
def _chunk_sum_kernel(logits_ptr, logits_stride, rows_ptr, temp_ptr, topk_ptr, topp_ptr, part_max_ptr, part_idx_ptr,
                      part_bad_ptr, part_sum_ptr, part_cnt_ptr, part_ent_ptr, owner_ptr, B, V, CHUNK, C,
                      PHASE: tl.constexpr, FILTERS: tl.constexpr, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr,
                      BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr):
    """Launch B: phase 1 writes the chunk's sum of exp(z - m) (float64) and
    count of terms > 0; phase 2 the chunk's sum of p log(p + 1e-5), p =
    exp(z - m) / float32(row total). Zeros, without reading the row, for rows
    the walk takes no unfiltered sums of: invalid, a greedy request, or (with
    FILTERS, rejection) a request with top-k or top-p on, whose walk sums
    only what the filters keep."""
    r = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    _, row_max, valid = fold_max(part_max_ptr, part_idx_ptr, part_bad_ptr, r, C, PROBS, LIBDEVICE, BLOCK_C)
    b = _request_of_row(rows_ptr, r, B)
    temperature = tl.load(temp_ptr + b)
    live = valid & (temperature > 0.0)
    if FILTERS:
        top_k = tl.load(topk_ptr + b)
        live = live & ~(((top_k > 0) & (top_k < V)) | (tl.load(topp_ptr + b) < 1.0))
    row_ptr = logits_ptr + r * logits_stride
    lo = c * CHUNK
    hi = tl.minimum(lo + CHUNK, V)
    acc = tl.full([], 0.0, tl.float64)
    count = tl.full([], 0, tl.int32)
    if live:
        m = tl.math.div_rn(row_max, temperature)
        total = tl.full([], 1.0, tl.float32)
        if PHASE == 2:
            total = fold_sum(part_sum_ptr, r, C, BLOCK_C).to(tl.float32)
        for s in range(lo, hi, BLOCK_V):
            offs = s + tl.arange(0, BLOCK_V)
            inside = offs < V  # as in _chunk_max_kernel
            if PROBS:
                x = _log(tl.load(row_ptr + offs, mask=inside, other=0.0).to(tl.float32), LIBDEVICE)
            else:
                x = tl.load(row_ptr + offs, mask=inside, other=float("-inf")).to(tl.float32)
            z = tl.math.div_rn(x, temperature)
            e = tl.where(inside, _exp(z - m, LIBDEVICE), 0.0)
            if PHASE == 1:
                acc += tl.sum(e.to(tl.float64), 0)
                count += tl.sum((e > 0.0).to(tl.int32), 0)
            else:
                p = e / total
                acc += tl.sum((p * _log(p + 1e-5, LIBDEVICE)).to(tl.float64), 0)
    out = r * C + c
    if PHASE == 1:
        tl.store(part_sum_ptr + out, acc)
        tl.store(part_cnt_ptr + out, count)
        if c == 0:
            tl.store(owner_ptr + r, tl.where(live, b, -1))
    else:
        tl.store(part_ent_ptr + out, acc)


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_SMS


def use_row_pass(batch: int, num_rows: int, mode: int, device: torch.device) -> bool:
    """The rule of the module docstring; SPECDEC_TRITON_VERIFY_ROWS overrides it."""
    choice = os.environ.get("SPECDEC_TRITON_VERIFY_ROWS", "auto")
    if choice not in ("auto", "multi", "single"):
        raise ValueError(f"SPECDEC_TRITON_VERIFY_ROWS must be auto, multi or single, got {choice!r}")
    if choice != "auto":
        return choice == "multi" and num_rows > 0
    if num_rows == 0:
        return False
    reads = {0: 1, 1: 2, 2: 3}[mode]
    return (num_rows * reads <= ROW_READS_PER_SM * sm_count(device)
            or (mode == 0 and num_rows <= GREEDY_ROWS_PER_REQUEST * batch))


def chunking(num_rows: int, vocab: int, block_v: int, device: torch.device) -> tuple[int, int, int]:
    """-> (C, CHUNK, BLOCK): C chunks of CHUNK elements per row, CHUNK a
    multiple of the load width BLOCK. BLOCK is block_v, halved (not below
    256) while a row has fewer blocks than the chunks wanted: one 128K row
    still gets ~500 programs of one warp each."""
    wanted = triton.cdiv(PROGRAMS_PER_SM * sm_count(device), num_rows)
    block = block_v
    while block > MIN_BLOCK and triton.cdiv(vocab, block) < wanted:
        block //= 2
    blocks = triton.cdiv(vocab, block)
    chunks = max(1, min(blocks, wanted))
    chunk = triton.cdiv(blocks, chunks) * block
    return triton.cdiv(vocab, chunk), chunk, block


def _empty(shape, dtype, device):
    """The buffers' allocator (tests poison it: every element must be written)."""
    return torch.empty(shape, dtype=dtype, device=device)


class RowStats:
    """The pre-pass's buffers for one launch: [R, C] partials and owner [R]."""

    def __init__(self, logits, rows_indptr, temperature, top_k, top_p, mode, probs, use_libdevice, block_v):
        device = logits.device
        num_rows, vocab = logits.shape
        self.chunks, self.chunk, block = chunking(num_rows, vocab, block_v, device)
        warps = max(1, min(4, block // MIN_BLOCK))  # 8 elements per thread
        self.block_c = triton.next_power_of_2(self.chunks)
        shape = (num_rows, self.chunks)
        self.part_max = _empty(shape, torch.float32, device)
        self.part_idx = _empty(shape, torch.int32, device)
        self.part_bad = _empty(shape, torch.int32, device)
        sampled = mode != 0
        self.sums = sampled
        self.part_sum = _empty(shape if sampled else (1,), torch.float64, device)
        self.part_cnt = _empty(shape if sampled else (1,), torch.int32, device)
        self.part_ent = _empty(shape if mode == 2 else (1,), torch.float64, device)
        self.owner = _empty((num_rows,) if sampled else (1,), torch.int32, device)
        grid = (num_rows, self.chunks)
        filters = mode == 1 and top_k is not None and top_p is not None
        _chunk_max_kernel[grid](logits, logits.stride(0), self.part_max, self.part_idx, self.part_bad, vocab,
                                self.chunk, self.chunks, PROBS=probs, BLOCK_V=block, num_warps=warps)
        for phase in ((1, 2) if mode == 2 else (1,) if sampled else ()):
            _chunk_sum_kernel[grid](logits, logits.stride(0), rows_indptr, temperature,
                                    top_k if filters else rows_indptr, top_p if filters else temperature,
                                    self.part_max, self.part_idx, self.part_bad, self.part_sum, self.part_cnt,
                                    self.part_ent, self.owner, rows_indptr.numel() - 1, vocab, self.chunk,
                                    self.chunks, PHASE=phase, FILTERS=filters, PROBS=probs, LIBDEVICE=use_libdevice, BLOCK_V=block,
                                    BLOCK_C=self.block_c, num_warps=warps)

    def args(self):
        """The walk kernel's arguments, in its order."""
        return (self.part_max, self.part_idx, self.part_bad, self.part_sum, self.part_cnt, self.part_ent,
                self.owner, self.chunks)
