#!/usr/bin/env python
"""Finetune a trained VideoAR pipeline with a LoRA on the transformer's attention and MLP projections.

    accelerate launch examples/train_lora.py --pretrained_model path/or/org-name \\
        --dataset data/my_clips --max_train_steps 300 --output_dir out/my-lora
    # Shapes with a colour the model has never seen:
    python examples/train_lora.py --dataset shapes --shapes_new_colours orange=255,128,0 --shapes_colours orange \\
        --num_clips 64 --output_dir out/orange-lora

The tokenizer, the text encoder and the transformer's own weights stay frozen; the loss, curriculum, checkpoints
(`--resume_from_checkpoint latest`) and logs are `train_videoar.py`'s: both run `TextToVideoTrainer`. The result is `output_dir/adapter`: the
standard PEFT files (`adapter_config.json`, `adapter_model.safetensors`) and a model card, for
`VideoARPipeline.load_lora_weights` or `videoar generate --lora`.
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch
from huggingface_hub import ModelCardData
from peft import LoraConfig, inject_adapter_in_model
from videoar_hf import VideoARPipeline, VideoARTransformer, shipped_model_path
from videoar_hf.training import add_training_args, check_training_args, make_accelerator, run_script, training_config_from_args
from videoar_hf.training.text_to_video import TextEncoder, TextToVideoTrainer

ADAPTER_NAME = "default"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model and LoRA")
    model.add_argument("--pretrained_model", default=None, help="VideoARPipeline folder or Hub id (default: the shipped VideoAR-Shapes).")
    model.add_argument("--rank", type=int, default=8, help="LoRA rank r.")
    model.add_argument("--alpha", type=float, default=None, help="LoRA alpha; the update is scaled by alpha / r (default: r).")
    model.add_argument("--target_modules", nargs="+", default=list(PROJECTIONS), help=f"Projections of every layer to adapt, from {list(PROJECTIONS)}.")
    model.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout on the adapted layers' inputs.")
    model.add_argument("--text_dropout", type=float, default=0.1, help="Probability of training on the empty prompt, for classifier-free guidance.")
    model.add_argument("--precompute", action="store_true", help="Encode each clip and caption once, and train on the cached latents.")
    add_training_args(parser, learning_rate=1e-3)
    parser.add_argument("--validation_prompts", nargs="*", default=["a red circle moving left"], help="Prompts sampled at every checkpoint.")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_training_args(parser, args)
    if args.rank < 1:
        parser.error(f"--rank must be >= 1, got {args.rank}.")
    if args.alpha is not None and not args.alpha > 0:
        parser.error(f"--alpha must be > 0, got {args.alpha}.")
    unknown = sorted(set(args.target_modules) - set(PROJECTIONS))
    if unknown:
        parser.error(f"--target_modules {unknown} are not projections of the transformer; choose from {list(PROJECTIONS)}.")
    if not 0 <= args.dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}.")
    if not 0 <= args.text_dropout < 1:
        parser.error(f"--text_dropout must be in [0, 1), got {args.text_dropout}.")
    return args


def load_pipeline(args) -> VideoARPipeline:
    source = args.pretrained_model or str(shipped_model_path())
    try:
        return VideoARPipeline.from_pretrained(source, dtype=torch.float32)
    except (ValueError, OSError) as error:
        raise SystemExit(f"train_lora: --pretrained_model {source!r}: {error}") from error


def lora_config(args) -> LoraConfig:
    return LoraConfig(
        r=args.rank, lora_alpha=args.alpha or args.rank, target_modules=args.target_modules, lora_dropout=args.dropout
    )


def model_card(args, base_model: str, history_path: Path, seconds: float) -> str:
    """The adapter's README: what it adapts, how it was trained, how to use it."""
    load = f'"{args.pretrained_model}"' if args.pretrained_model else "shipped_model_path()"
    imports = "VideoARPipeline" + ("" if args.pretrained_model else ", shipped_model_path")
    prompt = (args.validation_prompts or ["a red circle moving left"])[0]
    model_flag = f" --model {args.pretrained_model}" if args.pretrained_model else ""
    losses = [r["loss"] for r in json.loads(history_path.read_text())]
    is_hub_id = base_model.count("/") == 1 and not Path(base_model).exists()
    data = ModelCardData(
        library_name="videoar-hf", pipeline_tag="text-to-video", license="apache-2.0",
        base_model=base_model if is_hub_id else None, tags=["videoar", "lora", "text-to-video"],
    )  # fmt: skip
    dataset = args.dataset if args.dataset != "shapes" else (
        f"Shapes, {args.num_clips} clips, new colours {args.shapes_new_colours or 'none'}, "
        f"colours {args.shapes_colours or 'all'}"
        + (f", {args.shapes_new_colour_share:.0%} of clips in the new colours" if args.shapes_new_colour_share else "")
    )  # fmt: skip
    return f"""---
{data.to_yaml()}
---

# LoRA for VideoAR: {Path(args.output_dir).name}

A LoRA adapter on the transformer of `{base_model}`, trained with `examples/train_lora.py` from videoar-hf.

| | |
|---|---|
| rank / alpha | {args.rank} / {args.alpha or args.rank} |
| target modules | {", ".join(args.target_modules)} |
| dropout | {args.dropout} |
| data | {dataset} |
| steps | {len(losses)} |
| loss, first / last 10 steps | {sum(losses[:10]) / len(losses[:10]):.4f} / {sum(losses[-10:]) / len(losses[-10:]):.4f} |
| training time | {seconds / 60:.1f} min |

```python
from videoar_hf import {imports}

pipe = VideoARPipeline.from_pretrained({load})
pipe.load_lora_weights("path/to/this/adapter", adapter_name="lora")
video = pipe("{prompt}").frames[0]
```

Or: `videoar generate "{prompt}"{model_flag} --lora path/to/this/adapter:1.0`.
"""


def main(args: argparse.Namespace) -> Path:
    started = time.time()
    config = training_config_from_args(args, project="train_lora")
    accelerator = make_accelerator(config, args.mixed_precision, args.report_to)
    pipe = load_pipeline(args)
    transformer = pipe.transformer.requires_grad_(False)
    inject_adapter_in_model(lora_config(args), transformer, adapter_name=ADAPTER_NAME)  # only the LoRA trains
    text_encoder = TextEncoder(pipe.text_encoder, pipe.tokenizer, accelerator.device, memoize=args.precompute)
    video_tokenizer = pipe.video_tokenizer.to(accelerator.device).eval().requires_grad_(False)
    adapter_dir = config.output_dir / "adapter"
    base_model = args.pretrained_model or "videoar-shapes (shipped with videoar-hf)"

    def fresh_transformer() -> VideoARTransformer:
        fresh = VideoARTransformer(transformer.config)
        inject_adapter_in_model(lora_config(args), fresh, adapter_name=ADAPTER_NAME)
        return fresh

    def save(trained: VideoARTransformer) -> None:
        card = model_card(args, base_model, config.output_dir / "history.json", time.time() - started)
        pipe.transformer = trained
        pipe.save_lora_adapter(adapter_dir, adapter_name=ADAPTER_NAME)
        tmp = adapter_dir / ".README.md.tmp"
        tmp.write_text(card)
        os.replace(tmp, adapter_dir / "README.md")

    TextToVideoTrainer(
        accelerator, config, transformer, video_tokenizer, text_encoder, text_dropout=args.text_dropout,
        precompute=args.precompute, validation_prompts=args.validation_prompts, fresh_transformer=fresh_transformer,
        save=save, gradient_checkpointing=args.gradient_checkpointing,
    ).train()  # fmt: skip
    return adapter_dir


if __name__ == "__main__":
    run_script("train_lora", main, parse_args)
