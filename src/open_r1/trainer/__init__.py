"""The video GRPO trainer (one :class:`trl.GRPOTrainer` subclass)."""

from open_r1.trainer.video_grpo_trainer import VideoGRPOTrainer, per_row_patches, vision_tower

__all__ = ["VideoGRPOTrainer", "per_row_patches", "vision_tower"]
