"""Compiled decoding: a static KV cache filled from the project's own prefill, and a compiled decode step.

HF's eager sampling loop runs ~2,600 aten ops per decode step at 7B (about 29 ms on an H200 against a 3.3 ms
memory bound): decoding is host-bound. With a :class:`transformers.StaticCache` the decode step has fixed shapes, so
``generate`` compiles the model's forward once (``torch.compile(fullgraph=True)``; on CUDA with CUDA graphs, mode
``reduce-overhead``) and replays it every token. The sampling loop itself stays transformers' (the same logits
processors, ``torch.multinomial`` draws, EOS handling and length limit), so a seed gives the same completions.

TRL's ``cache_implementation: static`` cannot be used: the trainer prefills each distinct prompt once itself and
hands ``generate`` a filled cache. :func:`static_cache_from` copies that prefill into a static cache, each prompt's
rows repeated for its completions.

``mode``: ``"auto"`` (static and compiled on CUDA, eager elsewhere), ``"static"`` (everywhere; on CPU too, for the
equality tests) or ``"eager"`` (the dynamic cache and eager forward, as before).
"""

from __future__ import annotations

import torch

DECODE_MODES = ("auto", "static", "eager")


def check_decode_mode(mode: str) -> str:
    if mode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, got {mode!r}")
    return mode


def use_static_decode(mode: str, device: torch.device | str) -> bool:
    """Whether ``mode`` decodes with a static cache and a compiled step on ``device``."""
    check_decode_mode(mode)
    return mode == "static" or (mode == "auto" and torch.device(device).type == "cuda")


def decode_compile_config(device: torch.device | str, backend: str | None = None):
    """How ``generate`` compiles the decode step: the whole forward as one graph (no graph break allowed), static
    shapes; CUDA graphs on CUDA with inductor. ``backend`` (e.g. ``"eager"``) checks the capture without inductor."""
    from transformers import CompileConfig

    on_cuda = torch.device(device).type == "cuda"
    backend = backend or "inductor"
    mode = "reduce-overhead" if on_cuda and backend == "inductor" else None
    config = CompileConfig(fullgraph=True, dynamic=False, backend=backend, mode=mode)
    config._compile_all_devices = not on_cuda  # transformers compiles only on accelerators unless told
    return config


def compiling(generation_config, compile_config):
    """``generation_config`` set to compile its decode step with ``compile_config``. TRL's generation config disables
    compilation (its caches are dynamic, and transformers compiles only for a static one); a static decode turns it
    back on."""
    generation_config.compile_config, generation_config.disable_compile = compile_config, False
    return generation_config


# Cache lengths are rounded up to this many tokens: prompt lengths differ from video to video, and each distinct cache
# shape is one more compilation (torch.compile keeps 8 per function before it falls back to eager).
CACHE_LENGTH_BUCKET = 512


def bucketed_length(length: int, bucket: int = CACHE_LENGTH_BUCKET) -> int:
    return -(-int(length) // bucket) * bucket


def static_cache_from(model, prefill_cache, repeats: int, max_cache_len: int, reuse=None):
    """A :class:`transformers.StaticCache` holding ``prefill_cache`` (a filled dynamic cache of ``B`` prompts) with
    each prompt's rows repeated ``repeats`` times: ``B * repeats`` rows, room for ``max_cache_len`` tokens (rounded
    up to :data:`CACHE_LENGTH_BUCKET`).

    ``reuse``: a cache from an earlier call; when its shape, dtype and device fit it is emptied and filled again
    rather than allocated anew, so that a compiled (CUDA-graph) step keeps reading the same memory.
    """
    from transformers import StaticCache

    max_cache_len = bucketed_length(max_cache_len)
    first = prefill_cache.layers[0].keys
    rows = first.shape[0] * repeats
    if reuse is not None and _fits(reuse, rows, max_cache_len, first):
        static = reuse
        static.reset()
    else:
        static = StaticCache(config=model.config, max_cache_len=max_cache_len)
    if len(static.layers) != len(prefill_cache.layers):
        raise RuntimeError(f"{len(prefill_cache.layers)} prefilled layers for a {len(static.layers)}-layer cache")
    for target, source in zip(static.layers, prefill_cache.layers, strict=True):
        target.update(source.keys.repeat_interleave(repeats, dim=0), source.values.repeat_interleave(repeats, dim=0))
    return static


def _fits(cache, rows: int, max_cache_len: int, like: torch.Tensor) -> bool:
    layer = cache.layers[0]
    return (
        getattr(layer, "is_initialized", False)
        and layer.max_cache_len == max_cache_len
        and layer.keys.shape[0] == rows
        and layer.keys.dtype == like.dtype
        and layer.keys.device == like.device
    )


def empty_static_cache(model, max_cache_len: int):
    """An empty static cache for ``generate`` to prefill (sized on first use; length rounded up to the bucket)."""
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=bucketed_length(max_cache_len))


ROLLOUT_WEIGHTS = ("auto", "bf16", "master")


def check_rollout_weights(mode: str) -> str:
    if mode not in ROLLOUT_WEIGHTS:
        raise ValueError(f"rollout_weights must be one of {', '.join(ROLLOUT_WEIGHTS)}, got {mode!r}")
    return mode


def half_linear_weights(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> list:
    """The fp32 weights and biases of ``model``'s ``nn.Linear`` layers that a ``dtype`` autocast region casts on every
    call, leaving out any tensor shared with another kind of module (a tied embedding: autocast never casts an
    embedding, so its output must stay fp32)."""
    shared = {
        id(p) for m in model.modules() if not isinstance(m, torch.nn.Linear) for p in m.parameters(recurse=False)
    }
    found, seen = [], set()
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        for param in module.parameters(recurse=False):
            if param.dtype == torch.float32 and id(param) not in shared and id(param) not in seen:
                seen.add(id(param))
                found.append(param)
    return found


class RolloutWeights:
    """One ``dtype`` copy of the linear layers' fp32 master weights for the length of a rollout, instead of the cast
    that autocast makes on every call of every layer (481 weight casts per decode step at 7B, ~42 GB of traffic).

    Under autocast a linear layer computes ``linear(x.to(dtype), w.to(dtype), b.to(dtype))``; with the copy in place
    the casts of ``w`` and ``b`` are no-ops on tensors equal to what they would have produced, so the rollout is
    bit-identical (tested). Norms, softmax and the embedding keep autocast's own precision. The masters are put back
    on exit, as the same tensors; nothing may update the weights in between (generation runs without grad).
    """

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16):
        self.model, self.dtype = model, dtype
        self._masters: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        # Kept between rollouts and refreshed in place: the same addresses every time (a CUDA-graph decode step
        # records the weights' addresses).
        self._copies: dict[int, torch.Tensor] = {}

    def __enter__(self):
        if self._masters:
            raise RuntimeError("RolloutWeights is already in use")
        with torch.no_grad():
            for param in half_linear_weights(self.model, self.dtype):
                copy = self._copies.get(id(param))
                if copy is None or copy.shape != param.shape or copy.device != param.device:
                    copy = self._copies[id(param)] = torch.empty_like(param.data, dtype=self.dtype)
                copy.copy_(param.data)  # the cast autocast would make, once
                self._masters.append((param, param.data))
                param.data = copy
        return self

    def __exit__(self, *exc):
        for param, master in self._masters:
            param.data = master
        self._masters = []
        return False
