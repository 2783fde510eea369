"""Install TimeZero-open: ``pip install -e .`` (CPU / tests) or ``pip install -e .[gpu]`` (training on CUDA)."""

from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).parent

INSTALL_REQUIRES = [
    "torch>=2.5,<3",
    "torchvision>=0.20",
    "transformers>=5.20,<6",
    "trl>=1.16,<2",
    "accelerate>=1.10,<2",
    "datasets>=4.0",
    "deepspeed>=0.17,<1",
    "qwen-vl-utils>=0.0.14",
    "decord>=0.6.0; platform_machine == 'x86_64'",
    "av>=14",
    "wandb>=0.19",
    "safetensors>=0.5",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "pyyaml>=6",
    "peft>=0.15",  # --use_peft (LoRA) in grpo_video
]

EXTRAS = {
    "dev": ["pytest>=8", "ruff>=0.6", "hypothesis>=6.100", "scikit-video>=1.1.11"],
    "gpu": ["flash-attn>=2.7"],
    "vllm": ["vllm>=0.8"],
}

setup(
    name="timezero-open",
    version="0.1.0",
    description="TimeZero: temporal video grounding with a reasoning VLM trained by GRPO",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    package_dir={"": "src"},
    # Namespace discovery so the data folders (assets/, annotations/) ship as package data without warnings.
    packages=find_namespace_packages("src", include=["open_r1*"]),
    include_package_data=True,
    package_data={"open_r1": ["assets/**/*", "annotations/**/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
