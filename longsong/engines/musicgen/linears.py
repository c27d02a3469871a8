"""The decoder's linear layers as the decode loop calls them: fused (q|k|v, the codebook heads),
laid out for the fastest matmul on the device, or int8 dynamically quantized (CPU)."""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F


def quantize_int8(linears: list[torch.nn.Linear]) -> list[torch.nn.Module]:
    """int8 dynamic quantization: int8 weights (per output channel), activations quantized per call
    (torch.ao's dynamic quantized Linear: fbgemm / x86 kernels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig

        out = []
        for lin in linears:
            lin.qconfig = per_channel_dynamic_qconfig
            out.append(DynamicQuantizedLinear.from_float(lin))
            del lin.qconfig
    return out


def _int8_fn(qlin: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The module's quantized op without its Python wrapper (~7 us less per call): its int8 weight and
    bias (public weight()/bias()) packed again, the same values, and called as its forward does."""
    packed = torch.ops.quantized.linear_prepack(qlin.weight(), qlin.bias())
    op = torch.ops.quantized.linear_dynamic
    return lambda x: op(x, packed, True)  # reduce_range=True, as the module does on x86


def prepare_linear(mods: list[torch.nn.Linear], *, transpose: bool,
                   quantize: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """One callable computing cat([m(x) for m in mods], -1) (fused q|k|v, fused codebook heads).

    - quantize="int8": a dynamically quantized copy (the float weights are left as they are);
    - transpose=True (CPU): a layer with more outputs than inputs stores its weights once as one
      contiguous (in, out) matrix used as x @ W^T: MKL's sgemm for 1-2 rows is ~1.4x faster on that
      layout than on nn.Linear's (out, in) there (measured on this project's 2-core EPYC; narrow
      layers are not). The modules' own weights become views of it (same function, no second copy);
    - else: one (out, in) matrix for F.linear, the modules' weights again views of it.
    """
    bias = None
    if any(m.bias is not None for m in mods):
        bias = torch.cat([m.bias.detach() if m.bias is not None else
                          torch.zeros(m.out_features, dtype=m.weight.dtype, device=m.weight.device) for m in mods])
    if quantize == "int8":
        w = torch.cat([m.weight.detach() for m in mods], dim=0)
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, dtype=w.dtype, device=w.device)
        with torch.no_grad():
            lin.weight.copy_(w)
            if bias is not None:
                lin.bias.copy_(bias)
        (qlin,) = quantize_int8([lin])
        return _int8_fn(qlin)
    start = 0
    out_features = sum(m.weight.shape[0] for m in mods)
    if transpose and out_features > mods[0].weight.shape[1]:  # wide outputs only: (4096 -> 1024) is faster as is
        wt = torch.cat([m.weight.detach().t() for m in mods], dim=1).contiguous()
        for m in mods:
            n = m.weight.shape[0]
            m.weight = torch.nn.Parameter(wt[:, start:start + n].t(), requires_grad=False)
            start += n
        if bias is None:
            return lambda x: torch.matmul(x, wt)
        return lambda x: torch.matmul(x, wt) + bias
    if len(mods) == 1:
        w = mods[0].weight.detach()
    else:
        w = torch.cat([m.weight.detach() for m in mods], dim=0)
        for m in mods:
            n = m.weight.shape[0]
            m.weight = torch.nn.Parameter(w[start:start + n], requires_grad=False)
            start += n
    return lambda x: F.linear(x, w, bias)


def row_tile(fns: list[tuple[Callable[[torch.Tensor], torch.Tensor], int]], *, dtype: torch.dtype = torch.float32,
             max_rows: int = 16, candidates=(4, 8, 16, 32), trials: int = 2) -> int:
    """The smallest row count T such that, for every (fn, in_features) given, each row of fn(x) has the same
    bits whatever the number of rows (a multiple of T) and the row's position. CPU BLAS kernels work on tiles
    of rows; a row in a partly filled tile goes through another code path (on this project's 2-core EPYC (Zen 4) with
    MKL: tiles of 4, the 1-3 leftover rows differ in the last bits), so the decode loop pads its rows to a
    multiple of T and a window's results do not depend on its batch-mates. Probed at start, with the thread
    count the worker runs with and up to `max_rows` rows, because the tile depends on the CPU, the BLAS build
    and how it splits work between threads; the largest candidate when none passes."""
    gen = torch.Generator().manual_seed(0)
    for tile in candidates:
        ok = True
        for fn, width in fns:
            for _ in range(trials):
                rows = max(3 * tile, -(-max_rows // tile) * tile)
                x = torch.randn((rows, width), generator=gen).to(dtype)
                full = fn(x)
                shifted = fn(torch.roll(x, tile, dims=0))
                ok = (torch.equal(fn(x[:tile]), full[:tile]) and torch.equal(fn(x[:2 * tile]), full[:2 * tile])
                      and torch.equal(torch.roll(shifted, -tile, dims=0), full))
                if not ok:
                    break
            if not ok:
                break
        if ok:
            return tile
    return candidates[-1]
