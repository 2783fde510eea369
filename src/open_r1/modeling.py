"""Model and processor loading, the tiny test model, and the one place where (conversation, video) becomes tensors.

Training and evaluation both call :func:`encode_batch`, so the prompt tokens, the video patches and the time
positions (``second_per_grid_ts``) the model sees at evaluation are exactly those it was trained on.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoConfig, AutoProcessor, BatchFeature, Qwen2_5_VLForConditionalGeneration
from transformers.utils import import_utils

from open_r1.positions import DEFAULT_POSITION_LAYOUT, inner_vlm, set_position_layout
from open_r1.vision_attention import set_vision_attention

logger = logging.getLogger(__name__)

# The real Qwen2.5-VL-7B-Instruct config, processor and tokenizer files (no weights), see assets/SOURCES.md.
ASSETS_DIR = Path(__file__).resolve().parent / "assets" / "qwen2_5_vl_7b_instruct"

# Tokens a grounding answer never contains. A random (or badly drifted) policy can sample them, and a sampled
# `<|video_pad|>` would make the next forward pass look for a video that is not there.
VISION_TOKENS = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def cpu_threads(job: str) -> tuple[int, str]:
    """Threads for ``job``'s CPU work, and why: OMP_NUM_THREADS when set, else one. The tiny models gain nothing from
    more (the whole demo took 370 s on one thread of an idle 2-core machine); one thread does not collapse when other
    jobs share the cores (two threads under load ran a matmul 60x slower; a 400-query evaluation took 103 s with 2
    threads at load 4.4, 7 s with one), and the numbers do not depend on the machine's load, since the thread count
    changes the order of float sums."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    return 1, f"{job}'s default on CPU, whatever the load; set OMP_NUM_THREADS to choose"


def default_attn_implementation() -> str:
    """flash_attention_2 when transformers can run it here (flash-attn installed and a CUDA device: the paper's
    setting), else PyTorch's sdpa."""
    if flash_attention_available():
        return "flash_attention_2"
    return "sdpa"


_warned_attention: set[str] = set()


def flash_attention_available() -> bool:
    """transformers' own answer (the flash-attn package, its version and a device it runs on), asked at call time."""
    return import_utils.is_flash_attn_2_available()


def resolve_attn_implementation(requested: str | None) -> str:
    """``requested`` when this machine can run it; flash_attention_2 without CUDA or without the flash-attn package
    becomes sdpa, with one warning (recipes name the paper's kernel, a CPU or a GPU without flash-attn still runs)."""
    if requested is None:
        return default_attn_implementation()
    if requested == "flash_attention_2" and not flash_attention_available():
        reason = "no CUDA device" if not torch.cuda.is_available() else "the flash-attn package is not installed"
        if requested not in _warned_attention:
            logger.warning("flash_attention_2 requested but %s: using sdpa (same results, more memory)", reason)
            _warned_attention.add(requested)
        return "sdpa"
    return requested


def fix_model_card(output_dir: str | Path, base_model: str | None) -> None:
    """TRL's model card says "fine-tuned version of [None](https://huggingface.co/None)" when the base model is a
    local folder; name the folder instead."""
    card = Path(output_dir) / "README.md"
    if not base_model or not card.is_file():
        return
    text = card.read_text(encoding="utf-8")
    broken = "[None](https://huggingface.co/None)"
    if broken in text:
        card.write_text(text.replace(broken, f"the local checkpoint `{os.path.abspath(base_model)}`"), "utf-8")


class LocalModelCardMixin:
    """For a TRL trainer (mixed in before it): the model card, which TRL writes into ``output_dir`` at every
    checkpoint, names a local base model instead of "[None]"."""

    def create_model_card(self, *args, **kwargs):
        super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            fix_model_card(self.args.output_dir, getattr(self.model.config, "_name_or_path", None))


def default_dtype() -> torch.dtype:
    """bf16 on CUDA (the paper trains in bf16); fp32 on CPU, where bf16 matmuls are slow and imprecise."""
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt")
# Bytes read from each weight file for its digest: the header and this many chunks spread over the file.
DIGEST_CHUNKS, DIGEST_CHUNK_BYTES = 16, 1 << 16


def weights_digest(path: str | Path) -> str | None:
    """A digest that tells one checkpoint's weights from another's, cheaply: each weight file's name and size, its
    first 64 KiB (a safetensors header: names, shapes, offsets) and 16 chunks of 64 KiB spread over it. Retraining
    into the same folder keeps names and sizes and changes the values, so the chunks differ. About 1 MiB read per
    file, whatever its size. None for a Hub id or a folder without weight files."""
    import hashlib

    folder = Path(path).expanduser()
    if not folder.is_dir():
        return None
    files = sorted({f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern) if f.is_file()})
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(DIGEST_CHUNK_BYTES))
            for index in range(DIGEST_CHUNKS):
                handle.seek(size * index // DIGEST_CHUNKS)
                digest.update(handle.read(DIGEST_CHUNK_BYTES))
    return digest.hexdigest()[:16]


def check_model_path(path: str | Path) -> None:
    """Fail at once, naming the folder, when ``path`` looks local but does not exist.

    Without this a misspelled local path goes to the Hugging Face Hub: ``a/b/c`` gives a repo-id error and ``a/b``
    retries the network for minutes. A path is local when it starts with ``/``, ``.`` or ``~``, has more than one
    ``/``, or its first component is a folder here; a Hub id (``Qwen/Qwen2.5-VL-7B-Instruct``) is none of these.
    """
    text = str(path)
    folder = Path(text).expanduser()
    if folder.exists():
        return
    first = text.split("/")[0]
    if text.startswith(("/", ".", "~")) or text.count("/") > 1 or (first != text and Path(first).is_dir()):
        raise FileNotFoundError(
            f"model folder not found: {folder.resolve()} (a checkpoint folder holds config.json; "
            "a Hugging Face Hub id looks like org/name)"
        )


def load_processor(path: str | Path = ASSETS_DIR):
    """Load the Qwen2.5-VL processor (tokenizer + video processor + chat template) saved at ``path``."""
    check_model_path(path)
    processor = AutoProcessor.from_pretrained(str(path))
    processor.tokenizer.padding_side = "left"
    return processor


def load_model(
    path: str | Path,
    attn_implementation: str | None = None,
    dtype: torch.dtype | str | None = None,
    position_layout: str = DEFAULT_POSITION_LAYOUT,
    batched_vision_windows: bool = True,
) -> Qwen2_5_VLForConditionalGeneration:
    """Load a Qwen2.5-VL checkpoint with the attention kernel and dtype suited to the current machine.

    ``position_layout`` places the 3-D rope positions as the pretrained model expects ("reference", the default) or
    as the installed transformers does ("transformers"); see :mod:`open_r1.positions`. ``batched_vision_windows``: an
    sdpa vision tower attends one call per window size and layer instead of one per window (same features, see
    :mod:`open_r1.vision_attention`); ``False`` keeps transformers' per-window loop.
    """
    check_model_path(path)
    if isinstance(dtype, str) and dtype not in ("auto",):
        dtype = getattr(torch, dtype)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(path),
        attn_implementation=resolve_attn_implementation(attn_implementation),
        dtype=dtype or default_dtype(),
    )
    set_vision_attention(model, batched=batched_vision_windows)
    return set_position_layout(model, position_layout)


def vision_token_ids(tokenizer) -> list[int]:
    """Ids of the vision placeholder tokens, to suppress during generation."""
    return [tokenizer.convert_tokens_to_ids(token) for token in VISION_TOKENS]


def _small_vocab_tokenizer(tokenizer, num_base_tokens: int):
    """A copy of the Qwen tokenizer restricted to its first ``num_base_tokens`` BPE entries plus every special token.

    The first 256 entries are the byte alphabet, so any text (``<think>``, ``<answer>``, numbers) still encodes;
    only the long merges are dropped. Special tokens keep their text and get new ids right after the base vocabulary.
    """
    from tokenizers import Tokenizer
    from transformers import Qwen2Tokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = {tok: idx for tok, idx in spec["model"]["vocab"].items() if idx < num_base_tokens}
    spec["model"]["vocab"] = vocab
    spec["model"]["merges"] = [
        [a, b] for a, b in spec["model"]["merges"] if a in vocab and b in vocab and a + b in vocab
    ]
    for offset, added in enumerate(sorted(spec["added_tokens"], key=lambda t: t["id"])):
        added["id"] = num_base_tokens + offset
    backend = Tokenizer.from_str(json.dumps(spec))
    small = Qwen2Tokenizer(
        tokenizer_object=backend,
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
        unk_token=None,
        bos_token=None,
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    small.chat_template = tokenizer.chat_template
    small.padding_side = "left"
    return small


def build_tiny_model(
    out_dir: str | Path,
    small_vocab: bool = True,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_hidden_size: int = 32,
    vision_depth: int = 2,
    num_base_tokens: int = 2048,
) -> Path:
    """Save a tiny random Qwen2.5-VL built from the real 7B config, with its processor, to ``out_dir``.

    Everything that matters for video grounding is kept from the real config: the vision tower's patch size (14),
    spatial merge (2), temporal patch (2) and tokens_per_second, the 3-D mrope (sections rescaled to the smaller head
    dimension), the chat template and the special tokens. Only widths, depths and optionally the vocabulary shrink.
    ``small_vocab=True`` keeps 2k BPE entries instead of 152k; with 152k the output layer alone costs ~10 s per
    GRPO step on CPU. The saved directory loads with :func:`load_model` / :func:`load_processor`, which is what
    TRL needs to rebuild the reference model when ``beta > 0``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = load_processor(ASSETS_DIR)
    if small_vocab:
        processor.tokenizer = _small_vocab_tokenizer(processor.tokenizer, num_base_tokens)
    tokenizer = processor.tokenizer

    config = AutoConfig.from_pretrained(str(ASSETS_DIR))
    num_heads = 4
    head_dim = hidden_size // num_heads
    # mrope splits the rotary half-dimension into (time, height, width) sections; keep the real 16:24:24 ratio.
    half = head_dim // 2
    t_sec = max(1, round(half * 16 / 64))
    h_sec = (half - t_sec) // 2
    mrope_section = [t_sec, h_sec, half - t_sec - h_sec]

    text = config.text_config
    text.hidden_size = hidden_size
    text.intermediate_size = 2 * hidden_size
    text.num_hidden_layers = num_layers
    text.max_window_layers = num_layers
    text.layer_types = ["full_attention"] * num_layers
    text.num_attention_heads = num_heads
    text.num_key_value_heads = 2
    text.rope_parameters = {**text.rope_parameters, "mrope_section": mrope_section}
    text.dtype = "float32"

    vision = config.vision_config
    vision.depth = vision_depth
    vision.hidden_size = vision_hidden_size
    vision.intermediate_size = 2 * vision_hidden_size
    vision.num_heads = 2
    vision.out_hidden_size = hidden_size
    vision.fullatt_block_indexes = [vision_depth - 1]

    token_ids = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
        "vision_token_id": "<|vision_pad|>",
    }
    for key, token in token_ids.items():
        setattr(config, key, tokenizer.convert_tokens_to_ids(token))
    text.bos_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    text.pad_token_id = tokenizer.pad_token_id
    # Round up like the real model (152064 > 151665 tokens) so the embedding has spare rows.
    text.vocab_size = -(-len(tokenizer) // 64) * 64
    config.dtype = "float32"

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.float32)
    model.generation_config.bos_token_id = text.bos_token_id
    model.generation_config.eos_token_id = [text.eos_token_id, text.bos_token_id]
    model.generation_config.pad_token_id = text.pad_token_id
    model.save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))
    logger.info(
        "tiny Qwen2.5-VL (%d parameters, vocab %d) saved to %s", model.num_parameters(), len(tokenizer), out_dir
    )
    return out_dir


def video_metadata(clip) -> dict:
    """Metadata telling the processor the frames are already sampled at ``clip.sample_fps``.

    The processor derives ``second_per_grid_ts = temporal_patch_size / sampled_fps`` from this. Without it, it
    assumes 24 fps (1/12 s per grid step instead of 1 s at 2 fps) and the model's time positions shrink 12x.
    """
    num_frames = int(clip.frames.shape[0])
    return {
        "fps": float(clip.sample_fps),
        "total_num_frames": num_frames,
        "frames_indices": list(range(num_frames)),
        "duration": num_frames / float(clip.sample_fps),
    }


def encode_batch(
    processor,
    conversations: Sequence[list[dict]],
    clips: Sequence,
    padding_side: str = "left",
    add_generation_prompt: bool = True,
) -> BatchFeature:
    """Render chat conversations with one video each and turn them into model inputs.

    Args:
        processor: a Qwen2.5-VL processor (:func:`load_processor`).
        conversations: one chat per sample, each with exactly one ``{"type": "video"}`` content item.
        clips: one :class:`open_r1.video.VideoClip` per sample (uint8 frames ``(T, C, H, W)`` already sampled and
            resized by the preprocessing rules, plus ``sample_fps``).
        padding_side: ``"left"`` for generation.
        add_generation_prompt: end with the assistant header so the model continues with its answer.

    Returns:
        A ``BatchFeature`` with ``input_ids``, ``attention_mask``, ``pixel_values_videos``, ``video_grid_thw``,
        ``second_per_grid_ts`` and ``mm_token_type_ids`` (1 on image tokens, 2 on video tokens). The processor
        neither resizes nor resamples the frames: the clip's frames are the model's frames.
    """
    if len(conversations) != len(clips):
        raise ValueError(f"got {len(conversations)} conversations but {len(clips)} clips")
    texts = [
        processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=add_generation_prompt)
        for conv in conversations
    ]
    for text in texts:
        if text.count(processor.video_token) != 1:
            raise ValueError("each conversation needs exactly one video item")
    factor = processor.video_processor.patch_size * processor.video_processor.merge_size
    for clip in clips:
        height, width = clip.frames.shape[-2:]
        if clip.frames.dtype != torch.uint8 or height % factor or width % factor:
            raise ValueError(
                f"clip frames must be uint8 with height and width multiples of {factor} (resized by open_r1.video), "
                f"got {tuple(clip.frames.shape)} {clip.frames.dtype}"
            )
    encoded = processor(
        text=texts,
        videos=[clip.frames for clip in clips],
        video_metadata=[video_metadata(clip) for clip in clips],
        do_sample_frames=False,
        do_resize=False,
        cap_pixels_per_frame=False,  # only matters when resizing, which preprocessing already did
        padding=True,
        padding_side=padding_side,
        return_tensors="pt",
    )
    modes = {prompt_timestamps(conv) for conv in conversations}
    if len(modes) > 1:
        raise ValueError(f"a batch mixes prompt layouts {sorted(modes)}: encode each --timestamps mode separately")
    if modes == {"interleaved"}:
        _interleave_timestamps(processor, encoded, texts, clips, padding_side)
    return encoded


def prompt_timestamps(conversation: list[dict]) -> str:
    """The ``timestamps`` mode a conversation's video item asks for (``"mrope"`` when it names none)."""
    from open_r1.timestamps import DEFAULT_TIMESTAMPS, check_timestamps

    for message in conversation:
        content = message.get("content")
        for item in content if isinstance(content, list) else ():
            if isinstance(item, dict) and item.get("type") == "video":
                return check_timestamps(item.get("timestamps") or DEFAULT_TIMESTAMPS)
    return DEFAULT_TIMESTAMPS


def _interleave_timestamps(processor, encoded: BatchFeature, texts: list[str], clips: Sequence, padding_side: str):
    """Re-tokenize ``texts`` with each temporal patch's time before its tokens (:mod:`open_r1.timestamps`), in place.

    The pixels, ``video_grid_thw`` (one ``(T, H, W)`` row per video) and ``second_per_grid_ts`` stay the
    processor's; ``input_ids``, ``attention_mask`` and ``mm_token_type_ids`` are replaced. The whole prompt is
    tokenized as one text, as the processor does, so the timestamps tokenize as they would in context.
    """
    from open_r1.positions import placeholder_type_ids
    from open_r1.timestamps import interleaved_video_text, patch_times

    video_processor = processor.video_processor
    per_token = video_processor.merge_size**2
    start, end, pad = "<|vision_start|>", "<|vision_end|>", processor.video_token
    block = start + pad + end
    interleaved = []
    for text, clip, grid in zip(texts, clips, encoded["video_grid_thw"].tolist()):
        if text.count(block) != 1:
            raise ValueError(f"the rendered prompt lacks {block!r} around its video: the chat template is not Qwen's")
        times = patch_times(clip, video_processor.temporal_patch_size)
        if len(times) != grid[0]:
            raise ValueError(f"{len(times)} temporal patches of timestamps for a video grid {tuple(grid)}")
        video = interleaved_video_text(times, grid[1] * grid[2] // per_token, start, pad, end)
        interleaved.append(text.replace(block, video, 1))
    tokens = processor.tokenizer(interleaved, padding=True, padding_side=padding_side, return_tensors="pt")
    counts = (tokens["input_ids"] == processor.video_token_id).sum(-1)
    expected = encoded["video_grid_thw"].prod(-1) // per_token
    if not torch.equal(counts, expected):
        raise ValueError(
            f"interleaving gave {counts.tolist()} video tokens per row, the grids need {expected.tolist()}"
        )
    encoded["input_ids"] = tokens["input_ids"]
    encoded["attention_mask"] = tokens["attention_mask"]
    encoded["mm_token_type_ids"] = placeholder_type_ids(
        tokens["input_ids"], processor.image_token_id, processor.video_token_id
    )


def per_row_patches(pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor) -> list[torch.Tensor]:
    """Split the flat patch tensor of a batch into one tensor per row (one video per row)."""
    return list(torch.split(pixel_values_videos, video_grid_thw.prod(-1).tolist(), dim=0))


def video_features_once(model, patches: Sequence[torch.Tensor], grids: torch.Tensor, device) -> list[torch.Tensor]:
    """The vision features of every row, with each distinct patch tensor (by identity) encoded once.

    Rows of the same video pass the same tensor object; the tower runs once over the distinct videos, and rows share
    the resulting feature tensors. Gradients flow when grad is enabled (a trainable tower). Pass the features on as
    ``mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=tuple(features))}``.
    """
    distinct: dict[int, int] = {}
    for row, tensor in enumerate(patches):
        distinct.setdefault(id(tensor), row)
    rows = list(distinct.values())
    out = inner_vlm(model).get_video_features(
        torch.cat([patches[row] for row in rows]).to(device), grids[rows].to(device), return_dict=True
    )
    features = dict(zip(distinct, out.pooler_output))
    return [features[id(tensor)] for tensor in patches]
