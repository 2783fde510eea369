"""Attribute the work of one GRPO step of ``VideoGRPOTrainer`` to its phases (used by step_bench.py and gpu_smoke.py).

Phases: ``vision`` (the shared path's explicit tower calls), ``generation``, ``old_policy``, ``reference``,
``policy_forward``, ``backward``. For each: vision-tower patches (through the tower's first block, so a recompute
under gradient checkpointing counts), language-model tokens (through its first decoder layer, likewise), and, when
counting is on, FLOPs (torch's FLOP counter, with attention on CPU counted too: :data:`ATTENTION_FLOPS`) and aten ops; wall time is meaningful only with counting off.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

PHASES = ("vision", "generation", "old_policy", "reference", "policy_forward", "backward")


def _cpu_attention(query, key, value, *args, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch's FLOP counter has no formula for the CPU sdpa kernel, so attention counted 0 on CPU. These are torch's own
# counts for the GPU kernels (two matmuls forward, five backward), over every score the kernel computes: a dense 4-D
# mask (a packed group) counts its masked scores too, as the kernel computes them.
ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


class PhaseMeter:
    """Wraps a trainer's methods so that each piece of work lands in its phase; ``stats[phase][metric]``."""

    def __init__(self, trainer, count_ops: bool = False):
        self.trainer = trainer
        self.count_ops = count_ops
        self.stats: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.current: str | None = None
        self._handles = []
        self._restore = []
        models = [m for m in (trainer.model, trainer.ref_model) if m is not None]
        from open_r1.positions import inner_vlm

        for model in models:
            inner = inner_vlm(model)
            self._handles.append(inner.visual.blocks[0].register_forward_pre_hook(self._count("vision_patches")))
            layer = inner.language_model.layers[0]
            self._handles.append(layer.register_forward_pre_hook(self._count("llm_tokens"), with_kwargs=True))
        self._wrap_methods()

    def _count(self, metric):
        def hook(module, args, kwargs=None):
            hidden = args[0] if args else kwargs["hidden_states"]
            tokens = hidden.shape[0] if hidden.dim() == 2 else hidden.shape[0] * hidden.shape[1]
            self.stats[self.current or "other"][metric] += tokens

        return hook

    @contextlib.contextmanager
    def phase(self, name: str):
        if self.current is not None:  # nested work belongs to the enclosing phase
            yield
            return
        self.current = name
        modes = (
            [FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS), _OpCounter()] if self.count_ops else []
        )
        with contextlib.ExitStack() as stack:
            for mode in modes:
                stack.enter_context(mode)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            started = time.perf_counter()
            try:
                yield
            finally:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.stats[name]["seconds"] += time.perf_counter() - started
                self.current = None
        if modes:
            self.stats[name]["flops"] += modes[0].get_total_flops()
            self.stats[name]["aten_ops"] += modes[1].ops

    def _wrap(self, owner, attr, choose_phase):
        original = getattr(owner, attr)

        def wrapper(*args, **kwargs):
            with self.phase(choose_phase(*args, **kwargs)):
                return original(*args, **kwargs)

        setattr(owner, attr, wrapper)
        self._restore.append((owner, attr))

    def _wrap_methods(self):
        trainer = self.trainer
        in_rollout = {"value": False}
        generate_rollout = trainer._generate_and_score_completions

        def rollout(*args, **kwargs):
            in_rollout["value"] = True
            try:
                return generate_rollout(*args, **kwargs)
            finally:
                in_rollout["value"] = False

        trainer._generate_and_score_completions = rollout
        self._restore.append((trainer, "_generate_and_score_completions"))
        self._wrap(trainer, "_encode_videos", lambda *a, **k: "vision")

        def logp_phase(model, *args, **kwargs):
            if model is trainer.ref_model or (trainer.ref_model is None and in_rollout["value"] and trainer.beta):
                return "reference"
            return "old_policy" if in_rollout["value"] else "policy_forward"

        self._wrap(trainer, "_get_per_token_logps_and_entropies", logp_phase)
        # TRL's generation step (tokenized prompts in, completion ids out), around every generate() call.
        self._wrap(trainer, "_generate_single_turn", lambda *a, **k: "generation")

    def wrap_backward(self):
        """Attribute ``accelerator.backward`` (what Trainer.training_step calls) to the backward phase."""
        self._wrap(self.trainer.accelerator, "backward", lambda *a, **k: "backward")

    @contextlib.contextmanager
    def backward(self):
        with self.phase("backward"):
            yield

    def close(self):
        for handle in self._handles:
            handle.remove()
        for owner, attr in self._restore:
            owner.__dict__.pop(attr, None)

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for values in self.stats.values():
            for metric, value in values.items():
                out[metric] += value
        return dict(out)
