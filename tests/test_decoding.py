"""open_r1.decoding: rollouts and evaluation answers decoded from a static KV cache with a compiled step are the
tokens the eager path gives under the same seed; a compiler failure falls back to eager without losing the rollout."""

import logging

import pytest
import torch
from test_shared_work import perturbed_trainer, tiny_path  # noqa: F401  (the module fixture)
from test_trainer import CLIPS, dataset

from open_r1 import decoding
from open_r1.trainer import video_grpo_trainer as trainer_module


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
    calls = []
    model = trainer.model
    original = model.get_compiled_call

    def spy(config):
        calls.append(config)
        return original(config)

    model.get_compiled_call = spy
    with caplog.at_level(logging.WARNING):
        first = rollout(trainer, rows)
        second = rollout(trainer, rows)  # the same static cache, refilled
    assert "compiled decode failed" not in caplog.text
    assert len(calls) == 2 and calls[0].fullgraph and calls[0].backend == backend
    assert trainer._static_cache is not None and trainer.decode == "static"
    for out in (first, second):
        assert torch.equal(out["completion_ids"], expected["completion_ids"])
        mask = expected["completion_mask"].bool()
        torch.testing.assert_close(out["ref_per_token_logps"][mask], expected["ref_per_token_logps"][mask])
    assert set(CLIPS) == {row["video_id"] for row in rows}


@pytest.mark.slow
def test_a_compiler_failure_falls_back_to_eager_with_the_same_rollout(tiny_path, tmp_path, monkeypatch, caplog):  # noqa: F811
    rows = [dict(row) for row in dataset(num_rows=2) for _ in range(4)]
    expected = rollout(with_decode(perturbed_trainer(tiny_path, tmp_path / "eager", True), "eager"), rows)
    trainer = with_decode(perturbed_trainer(tiny_path, tmp_path / "broken", True), "static")

    def broken(*args, **kwargs):
        raise RuntimeError("no such compiler backend")

    monkeypatch.setattr(trainer_module, "static_cache_from", broken)
    with caplog.at_level(logging.WARNING):
        out = rollout(trainer, rows)
    assert "compiled decode failed (RuntimeError: no such compiler backend); decoding eagerly" in caplog.text
    assert trainer.decode == "eager"
    assert torch.equal(out["completion_ids"], expected["completion_ids"])  # the random state was restored
