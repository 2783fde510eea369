"""A CPU stand-in for the flash-attn 2 package: its kernels, and nothing above them.

This machine has no CUDA, so flash-attn cannot be installed. The stand-in is a module ``flash_attn`` with
``flash_attn_func``, ``flash_attn_varlen_func``, ``flash_attn_with_kvcache`` and ``flash_attn.bert_padding``
(``pad_input``, ``unpad_input``) that compute exact attention under flash-attn 2's contract:

- inputs ``(batch, seqlen, heads, head_dim)`` (``func``) or packed ``(total, heads, head_dim)`` with ``cu_seqlens``
  (``varlen``); fp16 or bf16 only, the same dtype for q, k and v, head_dim <= 256, a contiguous last dimension;
- grouped-query attention: the query heads are a multiple of the key/value heads, head ``h`` reads kv head
  ``h // (heads / kv_heads)``;
- ``causal`` aligned to the bottom right: query ``i`` of a sequence with ``Sq`` queries and ``Sk`` keys sees key
  ``j`` when ``j <= i + Sk - Sq``; a query that sees no key outputs 0;
- softmax in fp32, the output in the inputs' dtype.

transformers' own flash-attention integration runs around it unchanged: the kernel lookup by the name
``flash_attention_2``, ``flash_attention_forward``, ``_flash_attention_forward``'s unpadding, varlen and static-cache
code, the vision tower's varlen windows. :func:`install` also makes transformers' availability probes report what a
CUDA machine with flash-attn reports (the one thing this machine lacks is the device), and records each kernel call
in the returned counter, so a test can assert that the flash kernels actually ran.
"""

from __future__ import annotations

import collections
import importlib.machinery
import sys
import types

import torch

CALLS: collections.Counter = collections.Counter()
VERSION = "2.8.3"
# flash-attn's own dtypes; an equality test against fp32 paths may add torch.float32 (install(..., fp32=True)): the
# arithmetic is the same exact attention either way.
HALF = (torch.float16, torch.bfloat16)
DTYPES = HALF


def _check(q, k, v):
    if q.dtype not in DTYPES:
        raise RuntimeError("FlashAttention only support fp16 and bf16 data type")
    if not q.dtype == k.dtype == v.dtype:
        raise RuntimeError("query and key must have the same dtype")
    if q.shape[-1] > 256:
        raise RuntimeError("FlashAttention forward only supports head dimension at most 256")
    if q.shape[-2] % k.shape[-2]:
        raise RuntimeError("Number of heads in key/value must divide number of heads in query")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise RuntimeError("Input tensor must have contiguous last dimension")


def _attend(q, k, v, scale, causal, window, softcap):
    """One sequence: q ``(Sq, H, D)``, k and v ``(Sk, Hk, D)``."""
    sq, heads, dim = q.shape
    sk, kv_heads, _ = k.shape
    repeat = heads // kv_heads
    k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    scale = dim**-0.5 if scale is None else scale
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    left, right = window
    if causal:
        right = 0
    # Bottom-right alignment: query i sits at key position i + Sk - Sq.
    offset = torch.arange(sk)[None, :] - (torch.arange(sq)[:, None] + sk - sq)
    allowed = torch.ones(sq, sk, dtype=torch.bool)
    if right >= 0:
        allowed &= offset <= right
    if left >= 0:
        allowed &= offset >= -left
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a query that sees no key: 0
    out = torch.einsum("hqk,khd->qhd", weights, v.float())
    return out.to(q.dtype)


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """flash-attn 2's dense kernel: q ``(B, Sq, H, D)``, k and v ``(B, Sk, Hk, D)``."""
    CALLS["flash_attn_func"] += 1
    _check(q, k, v)
    if dropout_p or alibi_slopes is not None or return_attn_probs:
        raise NotImplementedError("the stand-in computes attention without dropout, ALiBi or returned probabilities")
    return torch.stack(
        [_attend(q[b], k[b], v[b], softmax_scale, causal, window_size, softcap) for b in range(q.shape[0])]
    )


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
):
    """flash-attn 2's packed kernel: sequence ``s`` is ``q[cu_seqlens_q[s]:cu_seqlens_q[s + 1]]`` (keys likewise)."""
    CALLS["flash_attn_varlen_func"] += 1
    _check(q, k, v)
    if dropout_p or alibi_slopes is not None or return_attn_probs or block_table is not None:
        raise NotImplementedError("the stand-in computes attention without dropout, ALiBi, probabilities or pages")
    if cu_seqlens_q.dtype != torch.int32 or cu_seqlens_k.dtype != torch.int32:
        raise RuntimeError("cu_seqlens_q must have dtype int32")
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    if len(bounds_q) != len(bounds_k) or bounds_q[-1] != q.shape[0] or bounds_k[-1] != k.shape[0]:
        raise RuntimeError("cu_seqlens do not describe the packed tensors")
    lengths_q = [b - a for a, b in zip(bounds_q, bounds_q[1:])]
    lengths_k = [b - a for a, b in zip(bounds_k, bounds_k[1:])]
    if max(lengths_q) > int(max_seqlen_q) or max(lengths_k) > int(max_seqlen_k):
        raise RuntimeError("a sequence is longer than max_seqlen")
    out = [
        _attend(q[a:b], k[c:d], v[c:d], softmax_scale, causal, window_size, softcap)
        for a, b, c, d in zip(bounds_q, bounds_q[1:], bounds_k, bounds_k[1:])
    ]
    return torch.cat(out)


def flash_attn_with_kvcache(*args, **kwargs):
    """Paged decoding (continuous batching); nothing in this project calls it."""
    CALLS["flash_attn_with_kvcache"] += 1
    raise NotImplementedError("the flash-attn stand-in has no paged kv-cache kernel")


def unpad_input(hidden_states, attention_mask, unused_mask=None):
    """``(B, S, ...)`` -> the tokens where the mask is set ``(nnz, ...)``, their flat indices, ``cu_seqlens`` (int32),
    the longest sequence and each sequence's used length (flash-attn >= 2.7 returns these five)."""
    CALLS["unpad_input"] += 1
    selected = attention_mask if unused_mask is None else attention_mask + unused_mask
    lengths = selected.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(selected.flatten(), as_tuple=False).flatten()
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(lengths, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return flat[indices], indices, cu_seqlens, int(lengths.max()), attention_mask.sum(dim=-1, dtype=torch.int32)


def pad_input(hidden_states, indices, batch, seqlen):
    """The inverse of :func:`unpad_input`: ``(nnz, ...)`` -> ``(batch, seqlen, ...)`` with zeros elsewhere."""
    CALLS["pad_input"] += 1
    out = hidden_states.new_zeros(batch * seqlen, *hidden_states.shape[1:])
    out[indices] = hidden_states
    return out.view(batch, seqlen, *hidden_states.shape[1:])


def modules() -> dict[str, types.ModuleType]:
    package = types.ModuleType("flash_attn")
    package.__version__ = VERSION
    package.__path__ = []  # a package: `from flash_attn.bert_padding import ...` resolves through sys.modules
    package.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None, is_package=True)
    for func in (flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache):
        setattr(package, func.__name__, func)
    padding = types.ModuleType("flash_attn.bert_padding")
    padding.__spec__ = importlib.machinery.ModuleSpec("flash_attn.bert_padding", None)
    padding.pad_input, padding.unpad_input = pad_input, unpad_input
    package.bert_padding = padding
    return {"flash_attn": package, "flash_attn.bert_padding": padding}


def install(monkeypatch, fp32: bool = False) -> collections.Counter:
    """Put the stand-in in place for the life of ``monkeypatch`` (a pytest fixture, or ``pytest.MonkeyPatch()`` in a
    worker process); returns the counter of kernel calls, emptied. ``fp32``: accept fp32 inputs too (flash-attn
    refuses them), for equality tests against fp32 paths at fp32 tolerances."""
    import transformers.modeling_flash_attention_utils as flash_utils
    import transformers.utils as utils
    import transformers.utils.import_utils as import_utils

    for name, module in modules().items():
        monkeypatch.setitem(sys.modules, name, module)

    def available(*args, **kwargs):
        return True

    # What transformers asks before it uses flash-attn: is the package there, and is there a device for it.
    for module in (import_utils, utils, flash_utils):
        monkeypatch.setattr(module, "is_flash_attn_2_available", available)
    matrix = flash_utils.FLASH_ATTENTION_COMPATIBILITY_MATRIX[2]
    monkeypatch.setitem(matrix, "general_availability_check", available)
    monkeypatch.setitem(matrix, "supported_devices", (*matrix["supported_devices"], (available, "cpu")))
    # Kernels transformers loaded before (none on this machine) are looked up again, from the stand-in.
    for name in ("_loaded_implementation", "_flash_fn", "_flash_varlen_fn", "_flash_with_kvcache_fn", "_pad_fn",
                 "_unpad_fn", "_process_flash_kwargs_fn", "_process_with_kvcache_kwargs_fn"):  # fmt: skip
        monkeypatch.setattr(flash_utils, name, None)
    monkeypatch.setattr(sys.modules[__name__], "DTYPES", (*HALF, torch.float32) if fp32 else HALF)
    CALLS.clear()
    return CALLS


def kernel_calls(counter: collections.Counter) -> int:
    """Calls of the attention kernels themselves (not the padding helpers)."""
    return counter["flash_attn_func"] + counter["flash_attn_varlen_func"]
