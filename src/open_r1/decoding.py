"""How rollouts and answers are decoded: one prefill per prompt, a static KV cache and a compiled decode step.

HF's eager sampling loop runs ~2,600 aten ops per decode step at 7B (about 29 ms on an H200 against a 3.3 ms
memory bound): decoding is host-bound. With a :class:`transformers.StaticCache` the decode step has fixed shapes, so
``generate`` compiles the model's forward once per (rows, cache length) and replays it every token
(``torch.compile(fullgraph=True)``; on CUDA with CUDA graphs, mode ``reduce-overhead``). The sampling loop itself
stays transformers' (the same logits processors, ``torch.multinomial`` draws, EOS handling and length limit), so a
seed gives the same completions.

The language model attends with sdpa inside a static decode (:func:`sdpa_for_static_decode`), whatever kernel it was
loaded with: under flash-attention 2 transformers passes the step a 2-D padding mask one token longer every step and
turns ``fullgraph`` off, so each token would be a new graph; under sdpa it builds a 4-D mask as long as the cache, one
shape for the whole generation. :class:`StaticDecoder` keeps the shapes it has compiled below dynamo's recompile limit
(a shape past its budget decodes eagerly from the same static cache) and repeats a call eagerly, with the random
state it started from, when the compiler fails: no query or rollout is lost to the compiler.

TRL's ``cache_implementation: static`` cannot be used: the trainer prefills each distinct prompt once itself and
hands ``generate`` a filled cache. :func:`static_cache_from` copies that prefill into a static cache, each prompt's
rows repeated for its completions; :func:`sample_from_one_prefill` is that rollout.

``mode``: ``"auto"`` (static and compiled on CUDA, eager elsewhere), ``"static"`` (everywhere; on CPU too, for the
equality tests) or ``"eager"`` (the dynamic cache and eager forward, as before).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)

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


def bucketed_length(length: int, bucket: int | None = None) -> int:
    bucket = bucket or CACHE_LENGTH_BUCKET
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
        self._masters: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor | None]] = []
        # Kept between rollouts and refreshed in place: the same addresses every time (a CUDA-graph decode step
        # records the weights' addresses).
        self._copies: dict[int, torch.Tensor] = {}

    def __enter__(self):
        if self._masters:
            raise RuntimeError("RolloutWeights is already in use")
        try:
            with torch.no_grad():
                for param in half_linear_weights(self.model, self.dtype):
                    copy = self._copies.get(id(param))
                    if copy is None or copy.shape != param.shape or copy.device != param.device:
                        copy = self._copies[id(param)] = torch.empty_like(param.data, dtype=self.dtype)
                    copy.copy_(param.data)  # the cast autocast would make, once
                    # A gradient waiting to be accumulated stays with its fp32 master (a bf16 tensor holding an fp32
                    # grad is refused by torch.compile).
                    self._masters.append((param, param.data, param.grad))
                    param.grad = None
                    param.data = copy
        except BaseException:
            # Failing half-way (out of memory while copying): the weights swapped so far go back, and the next rollout
            # may enter again.
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for param, master, grad in self._masters:
            param.data = master
            param.grad = grad
        self._masters = []
        return False


# --------------------------------------------------------------------------------------------------------------------
# The static decode: sdpa, one compilation per shape, eager past the budget or after a compiler failure


@contextlib.contextmanager
def sdpa_for_static_decode(model):
    """Inside the block the language model attends with sdpa when it was loaded with a flash-attention kernel (the
    vision tower keeps its own). A static decode then gets transformers' fixed-length 4-D mask and ``fullgraph``: one
    graph per (rows, cache length). The prefill's keys and values are the same tensors whichever kernel reads them."""
    from transformers.utils.generic import is_flash_attention_requested

    from open_r1.positions import inner_vlm

    language = inner_vlm(model).language_model.config
    if not is_flash_attention_requested(language):
        yield
        return
    top = model.config
    previous = top._attn_implementation_internal, language._attn_implementation
    # The top-level config decides generate()'s branches; the language model's config its attention and masks.
    top._attn_implementation_internal, language._attn_implementation = "sdpa", "sdpa"
    try:
        yield
    finally:
        top._attn_implementation_internal, language._attn_implementation = previous


# torch.compile backend of every static decode step when none is named (None: inductor). The CPU tests set "eager":
# dynamo still traces, guards and counts each graph, without inductor's C++ build.
COMPILE_BACKEND: str | None = None
# Shapes compiled per process before further shapes decode eagerly (None: half of dynamo's recompile limit).
MAX_COMPILED_SHAPES: int | None = None
# A run's static cache only grows, by at least CACHE_GROWTH at a time (StaticDecoder.cache_length_for); False sizes
# each call's cache to its own need (one shape per distinct bucket).
HIGH_WATER = True
CACHE_GROWTH = 1.25


def recompile_limit() -> int:
    """dynamo's number of graphs per function before it stops compiling it (8 in torch 2.x)."""
    import torch._dynamo.config as dynamo_config

    return int(getattr(dynamo_config, "recompile_limit", None) or dynamo_config.cache_size_limit)


def rng_state():
    return torch.random.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_rng_state(state) -> None:
    torch.random.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


class StaticDecoder:
    """Runs static-cache decodes of one process, compiled once per (rows, cache bucket) shape.

    ``max_shapes`` (default: half of dynamo's recompile limit, the rest left for recompiles that other guards cause)
    shapes are compiled; a further shape decodes eagerly from the same static cache (the same tokens: the compiled
    step computes what the eager one does). A compiler error repeats the call eagerly from the random state the call
    started with, and the rest of the run decodes eagerly. ``shapes`` lists the compiled shapes in order.
    """

    def __init__(self, device, backend: str | None = None, max_shapes: int | None = None):
        self.compile_config = decode_compile_config(device, backend or COMPILE_BACKEND)
        max_shapes = MAX_COMPILED_SHAPES if max_shapes is None else max_shapes
        self.max_shapes = max(1, recompile_limit() // 2) if max_shapes is None else max_shapes
        self.shapes: list[tuple[int, int]] = []
        self.compile = True
        self.cache = None  # the last static cache, refilled when the next call has its shape
        self.cache_length: int | None = None  # the high-water mark (HIGH_WATER)
        self._warned_budget = False

    def _compiles(self, shape: tuple[int, int]) -> bool:
        if not self.compile:
            return False
        if shape in self.shapes:
            return True
        if len(self.shapes) < self.max_shapes:
            self.shapes.append(shape)
            logger.info("compiled decode: shape %d of at most %d (%d rows, cache of %d tokens)",
                        len(self.shapes), self.max_shapes, *shape)  # fmt: skip
            return True
        if not self._warned_budget:
            self._warned_budget = True
            logger.warning("compiled decode: %d shapes compiled (%s); further shapes decode eagerly from the static "
                           "cache", len(self.shapes), self.shapes)  # fmt: skip
        return False

    def generation_config(self, generation_config, compiled: bool):
        """A copy of ``generation_config`` that compiles its decode step, or that decodes eagerly."""
        import copy

        config = copy.copy(generation_config)
        if compiled:
            return compiling(config, self.compile_config)
        # transformers compiles a static-cache decode on its own unless told not to.
        config.disable_compile = True
        return config

    def cache_length_for(self, needed: int) -> int:
        """The static cache's length for a call that needs ``needed`` tokens. With :data:`HIGH_WATER` the length only
        grows within a run, each time by at least :data:`CACHE_GROWTH`: real prompts vary by thousands of tokens
        (Charades-STA 1.0k-3.7k, ActivityNet 0.5k-5.9k at the paper's settings), which per-call buckets would turn into
        7-12 shapes (benchmarks/decode_shapes.py); this way a run meets 1-3. Otherwise: ``needed`` rounded up to the
        bucket."""
        if not HIGH_WATER:
            return bucketed_length(needed)
        if self.cache_length is None or needed > self.cache_length:
            grown = needed if self.cache_length is None else max(needed, math.ceil(self.cache_length * CACHE_GROWTH))
            self.cache_length = bucketed_length(grown)
        return self.cache_length

    def __call__(self, model, rows: int, needed_length: int, decode: Callable[[bool, int], object]):
        """``decode(compiled, cache_length)`` under sdpa, compiled when this shape is within the budget; repeated
        eagerly (same random state) when compiling fails."""
        cache_length = self.cache_length_for(needed_length)
        shape = (int(rows), cache_length)
        with sdpa_for_static_decode(model):
            if not self._compiles(shape):
                return decode(False, cache_length)
            state = rng_state()
            try:
                return decode(True, cache_length)
            except Exception as error:  # a compiler failure must not cost the rollout or the queries: decode eagerly
                logger.warning("compiled decode failed (%s: %s); this call and the rest of the run decode eagerly "
                               "from the static cache", type(error).__name__, str(error)[:300])  # fmt: skip
                self.compile, self.cache = False, None
                set_rng_state(state)
                return decode(False, cache_length)


# --------------------------------------------------------------------------------------------------------------------
# A rollout's sampling from one prefill per prompt


def sample_from_one_prefill(
    model, generate, input_ids, attention_mask, pooled, run, generation_config, kwargs, static: StaticDecoder | None
):
    """Sample ``run`` completions per prompt with the prompt prefilled once: the KV cache of all but the last prompt
    token is computed once per distinct prompt (with the model's own kernel), copied ``run`` times, and ``generate``
    continues from it (the last prompt token and every sampled token are then processed per completion, as without
    sharing). With ``static`` the copy is a static cache and the decode step is compiled (:class:`StaticDecoder`).
    """
    from open_r1.positions import inner_vlm

    inner = inner_vlm(model)
    video = {key: kwargs[key] for key in ("video_grid_thw", "second_per_grid_ts") if key in kwargs}
    mm_token_type_ids = kwargs["mm_token_type_ids"]
    with torch.no_grad():
        prefill = model(
            input_ids=input_ids[:, :-1],
            attention_mask=attention_mask[:, :-1],
            mm_token_type_ids=mm_token_type_ids[:, :-1],
            mm_encoder_outputs={"video": pooled},
            use_cache=True,
            logits_to_keep=1,
            **video,
        )
        # Decode offsets of the whole prompt (its last token is text, continuing the layout), one per completion.
        _, deltas = inner.get_rope_index(
            input_ids, mm_token_type_ids=mm_token_type_ids, attention_mask=attention_mask, **video
        )
    generation_config.num_return_sequences = 1
    expanded = {k: v.repeat_interleave(run, dim=0) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}

    def decode(cache, config):
        inner.rope_deltas = deltas.repeat_interleave(run, dim=0)
        return generate(
            input_ids=input_ids.repeat_interleave(run, dim=0),
            attention_mask=attention_mask.repeat_interleave(run, dim=0),
            generation_config=config,
            cache=cache,
            **expanded,
        )

    if static is None:
        cache = prefill.past_key_values
        cache.batch_repeat_interleave(run)
        return decode(cache, generation_config)

    new_tokens = generation_config.max_new_tokens or generation_config.max_length - input_ids.size(1)
    length = input_ids.size(1) + new_tokens

    def static_decode(compiled: bool, cache_length: int):
        # Filled again for a repeat: a failed compiled call may have written into it.
        static.cache = static_cache_from(model, prefill.past_key_values, run, cache_length, reuse=static.cache)
        return decode(static.cache, static.generation_config(generation_config, compiled))

    return static(model, input_ids.size(0) * run, length, static_decode)


@contextlib.contextmanager
def generate_replaced(model, generate: Callable):
    """``model.generate`` is ``generate`` inside the block; an instance-level wrapper that was there before (a
    profiler's, a test's, an outer rollout wrapper) is put back after it."""
    previous = model.__dict__.get("generate")
    model.generate = generate
    try:
        yield
    finally:
        if previous is None:
            del model.generate
        else:
            model.generate = previous


def equal_run_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, video_ids: list) -> int:
    """``k`` when the rows come in runs of ``k`` identical (prompt, video) rows (a group, or its share on this
    process); 1 when they do not."""
    num_rows = input_ids.size(0)
    same = [
        video_ids[i] == video_ids[i + 1]
        and torch.equal(input_ids[i], input_ids[i + 1])
        and torch.equal(attention_mask[i], attention_mask[i + 1])
        for i in range(num_rows - 1)
    ]
    lengths, current = [], 1
    for equal in same:
        if equal:
            current += 1
        else:
            lengths.append(current)
            current = 1
    lengths.append(current)
    return lengths[0] if len(set(lengths)) == 1 else 1


class GeneratedText(str):
    """An answer's text with its length in new tokens (end token included) and whether it ran out of budget."""

    def __new__(cls, text: str, num_tokens: int, hit_budget: bool):
        made = super().__new__(cls, text)
        made.num_tokens, made.hit_budget = num_tokens, hit_budget
        return made


def answer_lengths(completions, generation_config) -> list[tuple[int, bool]]:
    """``(new tokens, ended)`` per row of ``completions`` (rows are padded after their end token): the tokens up to
    and including the first end (or pad) token, and whether there was one."""
    ends = generation_config.eos_token_id
    ends = {ends} if isinstance(ends, int) else set(ends or [])
    if generation_config.pad_token_id is not None:
        ends.add(generation_config.pad_token_id)
    lengths = []
    for row in completions.tolist():
        stop = next((i for i, token in enumerate(row) if token in ends), None)
        lengths.append((len(row), False) if stop is None else (stop + 1, True))
    return lengths
