"""Tiny randomly initialised components, for tests and for trying the pipeline before any weights exist."""

import copy
import string
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertModel, BertTokenizer

from .configuration_videoar import VideoARConfig
from .modeling_tokenizer import VideoARTokenizer
from .modeling_videoar import VideoARTransformer
from .pipeline_videoar import VideoARPipeline

# a character-level WordPiece vocabulary: any lowercase ASCII prompt tokenizes without downloading anything
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_CHARS = string.ascii_lowercase + string.digits
TINY_VOCAB = _SPECIALS + list(_CHARS + string.punctuation) + [f"##{c}" for c in _CHARS]


def tiny_tokenizer_config(**overrides) -> dict:
    """`VideoARTokenizer` fields for 32x32 video: spatial compression 8, a 4x4 latent grid, scales 1, 2, 4."""
    config = dict(
        latent_channels=8,
        base_channels=8,
        channel_multipliers=(1, 2, 2, 2),
        num_res_blocks=1,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        scale_schedule=(1, 2, 4),
        norm_num_groups=4,
        sample_size=32,
    )
    return {**config, **overrides}


def tiny_text_encoder(hidden_size: int = 32, max_length: int = 64, seed: int = 0):
    """A 2-layer random BERT and its character-level tokenizer."""
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(TINY_VOCAB)}, model_max_length=max_length)
    config = BertConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_length,
    )
    torch.manual_seed(seed)
    return BertModel(config).eval(), tokenizer


def tiny_pipeline(
    seed: int = 0,
    temporal_compression_ratio: int = 4,
    latent_bits: int = 8,
    scale_schedule: tuple[int, ...] = (1, 2, 4),
    sample_size: int = 32,
    spatial_compression_ratio: int = 8,
) -> VideoARPipeline:
    """A randomly initialised pipeline; by default for 32x32 video: spatial compression 8, latent grid 4x4, 3 scales."""
    torch.manual_seed(seed)
    levels = spatial_compression_ratio.bit_length() - 1  # f = 2 ** levels
    video_tokenizer = VideoARTokenizer(
        **tiny_tokenizer_config(
            latent_channels=latent_bits,
            spatial_compression_ratio=spatial_compression_ratio,
            channel_multipliers=(1,) + (2,) * levels,
            temporal_compression_ratio=temporal_compression_ratio,
            scale_schedule=scale_schedule,
            sample_size=sample_size,
        )
    )
    transformer = VideoARTransformer(
        VideoARConfig.from_preset("tiny", latent_bits=latent_bits, scale_schedule=list(scale_schedule))
    )
    text_encoder, tokenizer = tiny_text_encoder(hidden_size=transformer.config.text_hidden_size, seed=seed)
    pipe = VideoARPipeline(
        video_tokenizer=video_tokenizer.eval(), transformer=transformer.eval(), text_encoder=text_encoder,
        tokenizer=tokenizer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_lora_adapter(
    transformer: VideoARTransformer,
    folder: str | Path,
    rank: int = 4,
    target_modules: Sequence[str] = ("q_proj", "v_proj", "up_proj"),
    seed: int = 0,
) -> Path:
    """A random (non-zero) LoRA adapter for `transformer`, written by peft itself in the standard PEFT format."""
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(target_modules), init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")  # peft vs transformers 5
        get_peft_model(copy.deepcopy(transformer), config).save_pretrained(folder)
    return Path(folder)


def offline_hub_repo(
    cache_dir: str | Path, repo_id: str, write: Callable[[Path], None], sha: str = "0123456789abcdef" * 2 + "01234567"
) -> str:
    """Lay out `repo_id` as huggingface_hub's cache does (`models--org--name/{refs/main, snapshots/<sha>/}`), with
    `write(snapshot_folder)` filling it; loading `repo_id` with this `cache_dir` then works offline."""
    repo = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    write(repo / "snapshots" / sha)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return repo_id
