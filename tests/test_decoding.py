"""open_r1.decoding: rollouts and evaluation answers decoded from a static KV cache with a compiled step are the
tokens the eager path gives under the same seed; a compiler failure falls back to eager without losing the rollout."""

import logging
import unittest.mock

import flash_attn_stand_in
import pytest
import torch
import torch._dynamo
from test_shared_work import perturbed_trainer, tiny_path  # noqa: F401  (the module fixture)
from test_trainer import CLIPS, dataset
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode

from open_r1 import decoding
from open_r1.positions import inner_vlm


def test_modes():
    assert decoding.use_static_decode("static", "cpu") and not decoding.use_static_decode("eager", "cuda")
    assert decoding.use_static_decode("auto", "cuda") and not decoding.use_static_decode("auto", "cpu")
    with pytest.raises(ValueError, match="decode must be one of auto, static, eager"):
        decoding.use_static_decode("fast", "cpu")


def test_compile_config():
    cuda = decoding.decode_compile_config("cuda")
    assert cuda.fullgraph and cuda.dynamic is False and cuda.mode == "reduce-overhead"
    cpu = decoding.decode_compile_config("cpu", backend="eager")
    assert cpu.fullgraph and cpu.backend == "eager" and cpu.mode is None and cpu._compile_all_devices


def test_the_static_cache_only_grows_by_a_quarter_at_least():
    static = decoding.StaticDecoder("cpu", backend="eager")
    # 4,200 needed: 4,608 (512-token buckets); shorter prompts reuse it; 4,700 grows it to 1.25 x 4,608 -> 6,144.
    assert [static.cache_length_for(n) for n in (4200, 1000, 4608, 4700, 5000, 6144)] == [4608] * 3 + [6144] * 3
    assert static.cache_length_for(9000) == 9216  # a need past the growth is met
    per_call = decoding.StaticDecoder("cpu", backend="eager")
    with unittest.mock.patch.object(decoding, "HIGH_WATER", False):
        assert [per_call.cache_length_for(n) for n in (4200, 1000)] == [4608, 1024]


def test_static_cache_repeats_each_prompt_and_is_reused(tiny_path):  # noqa: F811
    from transformers import DynamicCache

    from open_r1.modeling import load_model

    model = load_model(tiny_path)
    config = model.config.text_config
    heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    prefill = DynamicCache(config=model.config)
    gen = torch.Generator().manual_seed(0)
    for layer in range(config.num_hidden_layers):
        keys, values = (torch.randn(2, heads, 7, dim, generator=gen) for _ in range(2))
        prefill.update(keys, values, layer)
    static = decoding.static_cache_from(model, prefill, repeats=3, max_cache_len=7 + 600)
    layer = static.layers[0]
    assert layer.keys.shape == (6, heads, 1024, dim)  # 607 rounded up to the 512-token bucket
    assert int(layer.cumulative_length) == 7
    torch.testing.assert_close(layer.keys[3:6, :, :7], prefill.layers[0].keys[1:2].expand(3, -1, -1, -1))
    assert layer.keys[:, :, 7:].abs().sum() == 0
    again = decoding.static_cache_from(model, prefill, repeats=3, max_cache_len=700, reuse=static)
    assert again is static and int(again.layers[0].cumulative_length) == 7  # emptied and refilled in place
    other = decoding.static_cache_from(model, prefill, repeats=2, max_cache_len=700, reuse=static)
    assert other is not static and other.layers[0].keys.shape[0] == 4


def with_decode(trainer, mode):
    trainer.decode = mode
    return trainer


def rollout(trainer, rows):
    torch.manual_seed(1)
    return trainer._generate_and_score_completions(rows)


def graphs() -> int:
    """Graphs dynamo compiled since the last :func:`fresh_compiler` (torch's own counter)."""
    return counters["stats"]["unique_graphs"]


def fresh_compiler():
    torch._dynamo.reset()
    counters.clear()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_static_compiled_rollouts_sample_what_eager_samples(tiny_path, tmp_path, backend, caplog):  # noqa: F811
    # Two prompts with different videos (64 and 72 patches) and lengths, 4 completions each, sampled at temperature
    # 1 with top-k 50 (the recipes'); "eager" checks the whole-graph capture, "inductor" the compiled arithmetic.
    rows = [dict(row) for row in dataset(num_rows=2) for _ in range(4)]
    overrides = dict(max_completion_length=12, top_k=50)
    eager = with_decode(perturbed_trainer(tiny_path, tmp_path / "eager", True, **overrides), "eager")
    expected = rollout(eager, rows)
    trainer = with_decode(perturbed_trainer(tiny_path, tmp_path / backend, True, **overrides), "static")
    trainer.decode_compile_backend = backend
    fresh_compiler()
    with caplog.at_level(logging.WARNING):
        first = rollout(trainer, rows)
        second = rollout(trainer, rows)  # the same static cache, refilled
    assert "compiled decode failed" not in caplog.text
    static = trainer._static_decoder
    assert static.compile_config.fullgraph and static.compile_config.backend == backend
    # Two rollouts of 12 tokens each: one graph for the one (rows, cache bucket) shape.
    assert static.shapes == [(8, 512)] and graphs() == 1 and static.cache is not None
    for out in (first, second):
        assert torch.equal(out["completion_ids"], expected["completion_ids"])
        mask = expected["completion_mask"].bool()
        torch.testing.assert_close(out["ref_per_token_logps"][mask], expected["ref_per_token_logps"][mask])
    assert set(CLIPS) == {row["video_id"] for row in rows}


@pytest.mark.slow
def test_flash_attention_static_decode_compiles_once_per_shape(tiny_path, tmp_path, flash_attn):  # noqa: F811
    """The recipes' flash_attention_2 in bf16 (the stand-in refuses fp32, as flash-attn does): the prefill and the
    tower run the flash kernels, the compiled step sdpa over a cache-long mask; rollouts of 6 and then 12 new tokens
    (one cache bucket) compile one graph, where a flash-attention step would compile one per token."""
    rows = [dict(row) for row in dataset(num_rows=2) for _ in range(4)]
    trainer = with_decode(perturbed_trainer(tiny_path, tmp_path / "flash", True, bf16=True, top_k=50), "static")
    assert inner_vlm(trainer.model).language_model.config._attn_implementation == "flash_attention_2"
    trainer.decode_compile_backend = "eager"
    fresh_compiler()
    outs = []
    for new_tokens in (6, 12):
        trainer.generation_config.max_new_tokens = new_tokens
        before = flash_attn_stand_in.kernel_calls(flash_attn)
        outs.append(rollout(trainer, rows))
        assert flash_attn_stand_in.kernel_calls(flash_attn) > before  # the flash kernels ran in this rollout
    assert trainer._static_decoder.shapes == [(8, 512)] and graphs() == 1
    assert trainer._static_decoder.compile  # no failure, no fallback
    assert inner_vlm(trainer.model).language_model.config._attn_implementation == "flash_attention_2"  # restored
    # The compiled step computes what the eager static step computes: the same tokens under the same seed.
    eager = with_decode(perturbed_trainer(tiny_path, tmp_path / "eager", True, bf16=True, top_k=50), "static")
    eager._static_decoder = decoding.StaticDecoder("cpu", max_shapes=0)
    eager._static_decoder.compile = False
    eager.generation_config.max_new_tokens = 12
    assert torch.equal(rollout(eager, rows)["completion_ids"], outs[1]["completion_ids"])


@pytest.mark.slow
@pytest.mark.parametrize("budget", ["ours", "dynamo's"])
def test_more_prompt_lengths_than_the_recompile_limit_lose_no_rollout(
    tiny_path,  # noqa: F811
    tmp_path,
    monkeypatch,
    request,
    budget,
    caplog,
):
    """Each prompt length its own cache shape (bucket of 1 token) and dynamo's limit at 2 graphs: 3 shapes. Past the
    decoder's budget (1 shape) they decode eagerly; with no budget of ours dynamo's 3rd compile raises
    FailOnRecompileLimitHit (fullgraph), and the call is repeated eagerly. Either way the same tokens as eager."""
    rows = [dict(row) for row in dataset(num_rows=2) for _ in range(4)]
    rollouts = [rows[:4], rows[4:], rows]  # rows (4, 4, 8) and three prompt lengths
    monkeypatch.setattr(decoding, "CACHE_LENGTH_BUCKET", 1)
    monkeypatch.setattr(decoding, "HIGH_WATER", False)  # each call's own length: a shape per prompt length
    limit = torch._dynamo.config.patch(recompile_limit=2)
    limit.__enter__()
    request.addfinalizer(lambda: limit.__exit__(None, None, None))
    if budget == "dynamo's":
        monkeypatch.setattr(decoding, "MAX_COMPILED_SHAPES", 100)
    eager = with_decode(perturbed_trainer(tiny_path, tmp_path / "eager", True, top_k=50), "eager")
    expected = [rollout(eager, batch)["completion_ids"] for batch in rollouts]
    trainer = with_decode(perturbed_trainer(tiny_path, tmp_path / "static", True, top_k=50), "static")
    trainer.decode_compile_backend = "eager"
    fresh_compiler()
    with caplog.at_level(logging.WARNING):
        outs = [rollout(trainer, batch)["completion_ids"] for batch in rollouts]
    assert all(torch.equal(out, want) for out, want in zip(outs, expected, strict=True))
    if budget == "ours":
        assert len(trainer._static_decoder.shapes) == 1 and graphs() == 1
        assert "further shapes decode eagerly" in caplog.text and "failed" not in caplog.text
    else:
        assert graphs() == 2 and "compiled decode failed (FailOnRecompileLimitHit" in caplog.text
        assert not trainer._static_decoder.compile


def failing_backend(graph_module, example_inputs):
    raise RuntimeError("no such compiler backend")


@pytest.mark.slow
def test_a_compiler_failure_after_sampling_started_repeats_the_rollout_eagerly(tiny_path, tmp_path, caplog):  # noqa: F811
    # The backend fails at the first compiled step, after the last prompt token's step has drawn a token.
    rows = [dict(row) for row in dataset(num_rows=2) for _ in range(4)]
    expected = rollout(with_decode(perturbed_trainer(tiny_path, tmp_path / "eager", True), "eager"), rows)
    trainer = with_decode(perturbed_trainer(tiny_path, tmp_path / "broken", True), "static")
    trainer.decode_compile_backend = failing_backend
    draws = []
    real_multinomial = torch.multinomial

    def counting(*args, **kwargs):
        draws.append(1)
        return real_multinomial(*args, **kwargs)

    fresh_compiler()
    with caplog.at_level(logging.WARNING), unittest.mock.patch.object(torch, "multinomial", counting):
        out = rollout(trainer, rows)
    assert "compiled decode failed (BackendCompilerFailed" in caplog.text and "no such compiler backend" in caplog.text
    assert not trainer._static_decoder.compile
    # Tokens were drawn before the failure (the first step's), and the repeat drew them again from the same state.
    assert len(draws) > out["completion_ids"].shape[1]
    assert torch.equal(out["completion_ids"], expected["completion_ids"])


class CastCounter(TorchDispatchMode):
    """Counts the ops that turn one of ``tensors`` (by storage) into bf16: autocast's per-call casts (``_to_copy``)
    and a rollout copy's refresh (``copy_``)."""

    def __init__(self, tensors):
        super().__init__()
        self.pointers = {t.data_ptr() for t in tensors}
        self.casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in ("_to_copy", "copy_"):
            source = args[0] if name == "_to_copy" else args[1]
            target = out if name == "_to_copy" else args[0]
            if source.data_ptr() in self.pointers and target.dtype == torch.bfloat16:
                self.casts += 1
        return out


@pytest.mark.slow
def test_a_bf16_rollout_copy_samples_what_autocast_samples_with_one_cast_per_rollout(tiny_path, tmp_path):  # noqa: F811
    """fp32 master weights under bf16 autocast (the plain path's --bf16 true): one bf16 copy of the linear layers per
    rollout gives bit-identical completions and log-probs to autocast's cast of every layer on every call."""
    rows = [dict(row) for row in dataset(num_rows=2) for _ in range(4)]
    results, counts = {}, {}
    for mode in ("master", "auto"):
        trainer = with_decode(perturbed_trainer(tiny_path, tmp_path / mode, True, bf16=True, top_k=50), "eager")
        trainer.rollout_weights = mode
        model = trainer.accelerator.unwrap_model(trainer.model)
        # What accelerate's prepare does under bf16 mixed precision: autocast around each forward call.
        model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward)
        masters = decoding.half_linear_weights(model)
        assert masters and all(p.dtype == torch.float32 for p in masters)
        before = [(p.data_ptr(), p.detach().clone()) for p in masters]
        inside = CastCounter(masters)
        real = model.generate

        def spy(*args, counter=inside, real=real, **kwargs):  # the innermost generate, as TRL calls it
            with counter:
                return real(*args, **kwargs)

        model.generate = spy
        whole = CastCounter(masters)
        with whole:
            results[mode] = rollout(trainer, rows)
        counts[mode] = (inside.casts, whole.casts)
        # The masters are back, the same tensors with the same values.
        assert [(p.dtype, p.data_ptr()) for p in masters] == [(torch.float32, ptr) for ptr, _ in before]
        assert all(torch.equal(p, value) for p, (_, value) in zip(masters, before))
    master, copy = results["master"], results["auto"]
    assert torch.equal(master["completion_ids"], copy["completion_ids"])
    mask = master["completion_mask"].bool()
    assert torch.equal(master["ref_per_token_logps"][mask], copy["ref_per_token_logps"][mask])
    model = trainer.accelerator.unwrap_model(trainer.model)
    num = len(decoding.half_linear_weights(model))
    language = len(decoding.half_linear_weights(model.model.language_model)) + 1  # + lm_head
    # Autocast casts each language-model weight on every decode forward; the copy casts each once, before decoding.
    assert counts["auto"][0] == 0
    assert counts["master"][0] >= language * rows_decoded_steps(master)
    # Over the whole rollout the copy saves exactly generation's casts (the shared prefill's, one per language-model
    # weight, and every decode step's) less its own one per weight; the log-prob passes cast the same in both.
    assert counts["master"][1] - counts["auto"][1] == language + counts["master"][0] - num


def rows_decoded_steps(out) -> int:
    """Forward calls of one generate: the prefill plus one per generated token after the first."""
    return int(out["completion_mask"].sum(dim=1).max().item())


def test_a_tied_embedding_is_not_copied():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10), torch.nn.Linear(4, 4))
    model[1].weight = model[0].weight
    found = decoding.half_linear_weights(model)
    assert all(p is not model[0].weight for p in found)
    assert {id(p) for p in found} == {id(model[1].bias), id(model[2].weight), id(model[2].bias)}
    with decoding.RolloutWeights(model):
        assert model[0].weight.dtype == torch.float32 and model[2].weight.dtype == torch.bfloat16
    assert model[2].weight.dtype == torch.float32


class FailingCopy:
    """A rollout copy whose refresh runs out of memory (shape and device match, so it is used, not reallocated)."""

    def __init__(self, like):
        self.shape, self.device = like.shape, like.device

    def copy_(self, source):
        raise torch.OutOfMemoryError("out of memory while copying")


def test_a_rollout_copy_failing_half_way_puts_every_master_back():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    weights = decoding.RolloutWeights(model)
    masters = decoding.half_linear_weights(model)
    with weights:  # allocates the copies
        pass
    before = [(p.data_ptr(), p.dtype) for p in masters]
    real = weights._copies[id(masters[2])]
    weights._copies[id(masters[2])] = FailingCopy(masters[2])  # the second layer's weight: two already swapped
    with pytest.raises(torch.OutOfMemoryError):
        weights.__enter__()
    assert [(p.data_ptr(), p.dtype) for p in masters] == before  # every master back in place
    weights._copies[id(masters[2])] = real
    with weights:  # the next rollout may enter again ("already in use" before)
        assert all(p.dtype == torch.bfloat16 for p in masters)
    assert [(p.data_ptr(), p.dtype) for p in masters] == before


def test_a_rollout_copy_keeps_a_pending_gradient_with_its_master():
    model = torch.nn.Linear(4, 4)
    grads = [torch.ones_like(p) for p in model.parameters()]
    for param, grad in zip(model.parameters(), grads, strict=True):
        param.grad = grad
    with decoding.RolloutWeights(model):
        # torch.compile refuses a bf16 parameter holding an fp32 gradient (seen in a compiled decode after backward)
        assert all(p.dtype == torch.bfloat16 and p.grad is None for p in model.parameters())
    assert all(p.grad is g and p.dtype == torch.float32 for p, g in zip(model.parameters(), grads, strict=True))


def test_a_rollout_copy_is_refreshed_from_the_masters_every_rollout():
    """Two rollouts with an optimizer update between: the second decodes with the updated weights (a copy filled only
    when first allocated would sample from the initial weights for the whole run: off-policy, silently)."""
    model = torch.nn.Linear(4, 4)
    weights = decoding.RolloutWeights(model)
    with weights:
        assert torch.equal(model.weight, model.weight.detach())  # entered: the bf16 copy
        address = model.weight.data_ptr()
    with torch.no_grad():
        model.weight.add_(0.5)  # the update between rollouts, on the fp32 master
    updated = model.weight.detach().clone()
    with weights:
        assert model.weight.data_ptr() == address  # the same copy, refreshed in place
        assert torch.equal(model.weight, updated.to(torch.bfloat16))


@pytest.mark.slow
def test_the_static_cache_holds_the_prompt_and_every_new_token(tiny_path, tmp_path, monkeypatch):  # noqa: F811
    """The cache is asked for prompt + max_new_tokens (with 1-token buckets the length shows it exactly): sized for the
    new tokens only, the paper's 3.7k-token prompts would not fit their own prefill."""
    monkeypatch.setattr(decoding, "CACHE_LENGTH_BUCKET", 1)
    rows = [dict(row) for row in dataset(num_rows=1) for _ in range(4)]
    trainer = with_decode(perturbed_trainer(tiny_path, tmp_path / "static", True, max_completion_length=7), "static")
    trainer.decode_compile_backend = "eager"
    out = rollout(trainer, rows)
    cache = trainer._static_decoder.cache
    assert cache.layers[0].max_cache_len == out["prompt_ids"].size(1) + 7
