"""TimeZero-open: temporal video grounding with GRPO-trained Qwen2.5-VL."""

__version__ = "0.1.0"
