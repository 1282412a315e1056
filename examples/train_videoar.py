#!/usr/bin/env python
"""Train the VideoAR transformer on a frozen tokenizer and a frozen text encoder (docs/method.md §3, §5-§7).

    accelerate launch examples/train_videoar.py \\
        --tokenizer out/tokenizer/tokenizer --text_encoder path/to/text-encoder \\
        --dataset shapes --stages examples/stages_shapes.yaml --output_dir out/videoar

Cross-Frame Error Correction and the Random Frame Mask are on as the transformer config says; captions are dropped
to the empty prompt with `--text_dropout` for classifier-free guidance. Checkpoints are accelerate states, resumable
with `--resume_from_checkpoint latest`; the result is a whole `VideoARPipeline` in `output_dir/pipeline`.
"""

import argparse
import json
import logging
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoModel, AutoTokenizer

from videoar_hf import VideoARConfig, VideoARPipeline, VideoARTokenizer, VideoARTransformer
from videoar_hf.cli import one_line
from videoar_hf.configuration_videoar import TRAINING_FIELDS
from videoar_hf.training import add_training_args, check_training_args, make_accelerator, run_script, training_config_from_args
from videoar_hf.training.text_to_video import TextEncoder, TextToVideoTrainer

logger = logging.getLogger("train_videoar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("models")
    model.add_argument("--tokenizer", required=True, help="Folder or Hub id of a trained VideoARTokenizer (frozen).")
    model.add_argument("--text_encoder", default=None, help="Folder or Hub id of a transformers text encoder (frozen); its tokenizer is read from there too unless --text_tokenizer. Not used by a class-conditional model (--label_column).")
    model.add_argument("--text_tokenizer", default=None, help="Folder or Hub id of the text encoder's tokenizer, when it lives elsewhere (e.g. a pipeline's `tokenizer` folder).")
    model.add_argument("--transformer_preset", default="tiny", help="VideoARConfig preset of a new transformer: tiny, L, XL or 4B.")
    model.add_argument("--transformer_config", default=None, help="JSON of VideoARConfig fields over the preset, e.g. '{\"hidden_size\": 256}'; with --pretrained_transformer, new values of its training fields (CFEC, frame mask, loss weighting) for a later stage.")
    model.add_argument("--pretrained_transformer", default=None, help="Continue from this VideoARTransformer instead; a --tokenizer with finer scales after its own grows it to them.")
    model.add_argument("--text_dropout", type=float, default=0.1, help="Probability of training on the empty prompt, for classifier-free guidance (docs/method.md §7).")
    model.add_argument("--precompute", action="store_true", help="Encode each clip once per stage into a cache on disk (output_dir/latent_cache, reused by a re-run) and memoize captions; train on the cached latents.")
    add_training_args(parser, learning_rate=1e-4)
    parser.add_argument("--validation_prompts", nargs="*", default=["a red circle moving left", "a white square moving up"], help="Prompts sampled at every checkpoint.")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_training_args(parser, args)
    if not 0 <= args.text_dropout < 1:
        parser.error(f"--text_dropout must be in [0, 1), got {args.text_dropout}.")
    if (args.text_encoder is None) == (args.label_column is None):
        parser.error("Pass --text_encoder for a text-to-video model, or --label_column for a class-conditional one.")
    if args.transformer_config is not None:
        try:
            fields = json.loads(args.transformer_config)
        except json.JSONDecodeError as error:
            parser.error(f"--transformer_config is not valid JSON: {error}")
        if not isinstance(fields, dict):
            parser.error(f"--transformer_config must be a JSON object of VideoARConfig fields, got {args.transformer_config!r}.")
        fixed = sorted(set(fields) - set(TRAINING_FIELDS))
        if args.pretrained_transformer and fixed:
            parser.error(f"--transformer_config with --pretrained_transformer may set training fields only "
                         f"({', '.join(TRAINING_FIELDS)}), not {fixed}.")  # fmt: skip
    return args


def load_text_encoder(args, device) -> TextEncoder:
    """The frozen text encoder and its tokenizer, each from where it lives."""
    tokenizer_source = args.text_tokenizer or args.text_encoder
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    except (OSError, ValueError) as error:
        raise ValueError(f"--text_tokenizer {tokenizer_source!r}: no tokenizer loads from there ({error}).") from error
    model = AutoModel.from_pretrained(args.text_encoder, dtype=torch.float32)
    return TextEncoder(model, tokenizer, device, memoize=args.precompute, source=tokenizer_source)


def new_transformer(args, video_tokenizer, text_encoder: TextEncoder | None, label_names: list[str] | None):
    """A new transformer matching the tokenizer, and the text encoder or the classes."""
    matching = {"latent_bits": video_tokenizer.config.latent_channels, "scale_schedule": list(video_tokenizer.config.scale_schedule)}
    if label_names is None:
        matching["text_hidden_size"] = text_encoder.model.config.hidden_size
    else:
        matching.update(num_classes=len(label_names), id2label=dict(enumerate(label_names)))
    return VideoARTransformer(VideoARConfig.from_preset(args.transformer_preset, **matching, **json.loads(args.transformer_config or "{}")))


def build_transformer(args, video_tokenizer, text_encoder: TextEncoder | None, label_names: list[str] | None):
    """The pretrained transformer with the given training fields (a later stage's), grown to a finer tokenizer's
    scales, or a new one."""
    fields = json.loads(args.transformer_config or "{}")
    if args.pretrained_transformer:  # trainable weights stay fp32 even from a bf16 export
        transformer = VideoARTransformer.from_pretrained(args.pretrained_transformer, dtype=torch.float32)
    try:
        if not args.pretrained_transformer:
            return new_transformer(args, video_tokenizer, text_encoder, label_names)
        for field, value in fields.items():
            setattr(transformer.config, field, value)
        transformer.config.validate_architecture()
    except (StrictDataclassError, ValueError) as error:
        if not fields:
            raise
        raise ValueError(f"--transformer_config {args.transformer_config}: {one_line(error)}") from error
    schedule = list(video_tokenizer.config.scale_schedule)
    if list(transformer.config.scale_schedule) != schedule:
        try:
            transformer.extend_scale_schedule(schedule)
        except ValueError as error:
            raise ValueError(f"--pretrained_transformer {args.pretrained_transformer} does not fit --tokenizer "
                             f"{args.tokenizer}: {one_line(error)}") from error  # fmt: skip
        logger.info(f"Grew the transformer's scales to the tokenizer's {schedule}")
    return transformer


def main(args: argparse.Namespace) -> Path:
    config = training_config_from_args(args, project="train_videoar")
    accelerator = make_accelerator(config, args.mixed_precision, args.report_to)
    video_tokenizer = VideoARTokenizer.from_pretrained(args.tokenizer).to(accelerator.device).eval().requires_grad_(False)
    text_encoder = load_text_encoder(args, accelerator.device) if args.text_encoder else None
    label_names = config.data.label_names() if args.label_column else None
    transformer = build_transformer(args, video_tokenizer, text_encoder, label_names)
    # the pipeline re-encodes past the longest clip trained on (docs/method.md §8)
    trained_frames = max(video_tokenizer.num_latent_frames(stage.num_frames) for stage in config.stages)
    transformer.config.max_latent_frames = max(trained_frames, transformer.config.max_latent_frames or 0)
    try:  # before any step: a re-encoded context must leave a window frames to sample
        transformer.config.validate_architecture()
    except ValueError as error:
        raise ValueError(f"The stages train on {trained_frames} latent frames at most: {one_line(error)}") from error
    pipeline_dir = config.output_dir / "pipeline"

    def save(trained: VideoARTransformer) -> None:
        pipe = VideoARPipeline(video_tokenizer=video_tokenizer, transformer=trained, text_encoder=text_encoder and text_encoder.model,
                               tokenizer=text_encoder and text_encoder.tokenizer)  # fmt: skip
        pipe.save_pretrained(pipeline_dir)

    trainer = TextToVideoTrainer(
        accelerator, config, transformer, video_tokenizer, text_encoder, text_dropout=args.text_dropout,
        precompute=args.precompute, validation_prompts=args.validation_prompts,
        fresh_transformer=lambda: VideoARTransformer(transformer.config), save=save,
        gradient_checkpointing=args.gradient_checkpointing,
    )  # fmt: skip
    trainer.train()
    return pipeline_dir


if __name__ == "__main__":
    run_script("train_videoar", main, parse_args)
