"""Run ``open_r1.grpo_video`` under torchrun on CPU and record what tests/test_distributed.py compares.

    torchrun --nproc_per_node 2 tests/_dist_train.py --record DIR [grpo_video flags ...]

The training itself is the entry point's ``cli``, unchanged. This driver only adds what a test needs around it:

- a dense reward, registered the way a researcher adds one (``REWARD_FUNCS[name] = fn``): the random tiny model
  never earns an IoU or format reward, and all-equal rewards give zero advantages and a zero gradient, which would
  make "same grad norm" trivially true;
- that reward also records the completion ids each rank scored, so the test can check both backends sampled the
  same rollouts before comparing their gradients;
- (DeepSpeed on CPU processes needs a gloo process group; ``grpo_video.cli`` sets that up itself.)

- ``--flash_attn_stand_in``: the CPU stand-in for flash-attn's kernels (tests/flash_attn_stand_in.py), so that a
  ``flash_attention_2`` recipe runs transformers' real flash-attention code in every process;
- a count of the language model's forward calls and of the groups packed into each call, to show that every rank
  made the same number of calls (ZeRO-3 gathers the weights in each) whatever its groups.

Each rank writes ``DIR/rank<r>.json``: the trainer's ``log_history`` and the completion ids per rollout.
"""

import argparse
import json
from pathlib import Path

import torch

# Half of the tiny model's 2k base vocabulary: a random policy scores around 0.5 with a spread across completions.
LOW_TOKEN_LIMIT = 1024

_rollouts: list[list[list[int]]] = []


def low_token_reward(completion_ids, **kwargs) -> list[float]:
    """Share of completion tokens with an id below ``LOW_TOKEN_LIMIT`` (dense, deterministic, varies per sample)."""
    _rollouts.append([list(map(int, ids)) for ids in completion_ids])
    return [sum(int(t) < LOW_TOKEN_LIMIT for t in ids) / max(len(ids), 1) for ids in completion_ids]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", required=True, type=Path, help="folder for the per-rank JSON records")
    parser.add_argument(
        "--flash_attn_stand_in",
        choices=["half", "fp32"],
        default=None,
        help="install the flash-attn CPU stand-in (fp32: accepting fp32 inputs too)",
    )
    args, train_argv = parser.parse_known_args(argv)

    kernel_calls = None
    if args.flash_attn_stand_in:
        import flash_attn_stand_in
        import pytest

        kernel_calls = flash_attn_stand_in.install(pytest.MonkeyPatch(), fp32=args.flash_attn_stand_in == "fp32")

    from open_r1.grpo_video import cli
    from open_r1.modeling import Qwen2_5_VLForConditionalGeneration
    from open_r1.rewards import REWARD_FUNCS
    from open_r1.trainer import packing

    REWARD_FUNCS["low_token"] = low_token_reward

    # Every language-model forward of the policy (rollout prefill, decode steps, log-prob passes) and the groups
    # packed into each log-prob call.
    lm_calls, groups_per_call = [0], []
    real_concat = packing.concat_packed

    def count_call(module, args):
        if isinstance(module, Qwen2_5_VLForConditionalGeneration):
            lm_calls[0] += 1

    def counted_concat(pieces):
        groups_per_call.append(len(pieces))
        return real_concat(pieces)

    torch.nn.modules.module.register_module_forward_pre_hook(count_call)
    packing.concat_packed = counted_concat

    trainer = cli(train_argv)

    rank = trainer.accelerator.process_index
    args.record.mkdir(parents=True, exist_ok=True)
    record = {
        "world_size": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "log_history": trainer.state.log_history,
        "rollouts": _rollouts,
        "lm_calls": lm_calls[0],
        "groups_per_call": groups_per_call,
        "flash_kernel_calls": None if kernel_calls is None else dict(kernel_calls),
        "attn_implementation": trainer.accelerator.unwrap_model(trainer.model).config._attn_implementation,
    }
    if trainer.is_deepspeed_enabled:
        engine = trainer.model_wrapped
        params = list(engine.parameters())
        record["zero_stage"] = engine.zero_optimization_stage()
        record["offload_param"] = str(getattr(engine.zero_offload_param(), "device", None))
        record["offload_optimizer"] = engine.zero_cpu_offload()
        record["optimizer"] = type(engine.basic_optimizer).__name__
        # Under ZeRO-3 each rank holds a shard: the local tensor is empty and ds_numel is the full size.
        record["local_numel"] = sum(p.numel() for p in params)
        record["full_numel"] = sum(getattr(p, "ds_numel", p.numel()) for p in params)
        record["local_shard_numel"] = sum(p.ds_tensor.numel() for p in params if hasattr(p, "ds_tensor"))
    (args.record / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
