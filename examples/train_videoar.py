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
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from diffusers.utils import export_to_video
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from videoar_hf import VideoARConfig, VideoARPipeline, VideoARTokenizer, VideoARTransformer
from videoar_hf.error_correction import error_corrected_pyramid
from videoar_hf.scale_schedule import get_scale_sizes
from videoar_hf.training_utils import (
    StageSchedule,
    add_training_args,
    all_finite,
    build_stages,
    check_training_args,
    collate,
    ema_tensors,
    make_accelerator,
    run_script,
    stage_batches_for,
    start_or_resume,
    stop_on_non_finite_loss,
    trackable,
)

logger = logging.getLogger("train_videoar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("models")
    model.add_argument("--tokenizer", required=True, help="Folder or Hub id of a trained VideoARTokenizer (frozen).")
    model.add_argument("--text_encoder", required=True, help="Folder or Hub id of a transformers text encoder and its tokenizer (frozen).")
    model.add_argument("--transformer_preset", default="tiny", help="VideoARConfig preset of a new transformer: tiny, L, XL or 4B.")
    model.add_argument("--transformer_config", default=None, help="JSON of VideoARConfig fields over the preset, e.g. '{\"hidden_size\": 256}'.")
    model.add_argument("--pretrained_transformer", default=None, help="Continue from this VideoARTransformer instead.")
    model.add_argument("--text_dropout", type=float, default=0.1, help="Probability of training on the empty prompt, for classifier-free guidance (docs/method.md §7).")
    model.add_argument("--precompute", action="store_true", help="Encode each clip once per stage and each distinct caption once, and train on the cached latents and text states.")
    add_training_args(parser, learning_rate=1e-4)
    parser.add_argument("--validation_prompts", nargs="*", default=["a red circle moving left", "a white square moving up"], help="Prompts sampled at every checkpoint.")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_training_args(parser, args)
    if not 0 <= args.text_dropout < 1:
        parser.error(f"--text_dropout must be in [0, 1), got {args.text_dropout}.")
    if args.transformer_config is not None:
        try:
            json.loads(args.transformer_config)
        except json.JSONDecodeError as error:
            parser.error(f"--transformer_config is not valid JSON: {error}")
    return args


class TextEncoder:
    """The frozen text encoder. With `memoize`, each distinct caption is encoded once (`--precompute`)."""

    def __init__(self, model, tokenizer, device, memoize: bool = False):
        self.model = model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = device
        self.memo: dict[str, torch.Tensor] | None = {} if memoize else None

    @classmethod
    def from_pretrained(cls, path: str, device, memoize: bool = False) -> "TextEncoder":
        return cls(AutoModel.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path), device, memoize)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(texts, padding="longest", truncation=True, return_tensors="pt").to(self.device)
        states = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        return states.float(), tokens.attention_mask

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.memo is None:
            return self.encode(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if missing:
            states, mask = self.encode(missing)
            self.memo.update({t: s[m.bool()] for t, s, m in zip(missing, states, mask)})
        rows = [self.memo[t] for t in texts]
        states = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(r), dtype=torch.long) for r in rows], batch_first=True)
        return states, mask.to(self.device)


@torch.no_grad()
def precompute_latents(dataset, video_tokenizer: VideoARTokenizer, batch_size: int = 16) -> list[dict]:
    """Encode every clip once: `[{"latents": (d, T', h, w), "text": str}]`, a map-style dataset on the CPU."""
    items = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="encoding clips", unit="batch"):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        video = batch["video"].to(video_tokenizer.device, video_tokenizer.dtype)
        latents = video_tokenizer.encode(video).latents.float().cpu()
        items += [{"latents": x, "text": t} for x, t in zip(latents, batch["text"])]
    return items


def training_loss(args, batch, video_tokenizer, text_encoder, transformer, accelerator) -> torch.Tensor:
    """Bitwise cross-entropy on the error-corrected pyramid of one batch (docs/method.md §3, §5)."""
    if "latents" in batch:
        latents = batch["latents"].to(accelerator.device)
    else:
        with torch.no_grad():
            video = batch["video"].to(accelerator.device, video_tokenizer.dtype)
            latents = video_tokenizer.encode(video).latents.float()
    # captions dropped with torch's RNG, which checkpoints restore
    keep = (torch.rand(len(batch["text"])) >= args.text_dropout).tolist()
    text_states, text_mask = text_encoder([t if k else "" for t, k in zip(batch["text"], keep)])
    config = accelerator.unwrap_model(transformer).config
    scale_sizes = get_scale_sizes(config.scale_schedule, *latents.shape[-2:])
    pyramid = error_corrected_pyramid(video_tokenizer.quantizer, latents, scale_sizes, config)
    return transformer(pyramid.scale_inputs, text_states, text_mask, labels=pyramid.bits).loss


def load_models(args, accelerator) -> tuple[VideoARTokenizer, TextEncoder, VideoARTransformer]:
    """The frozen tokenizer and text encoder, and the transformer to train: new, or `--pretrained_transformer`."""
    video_tokenizer = VideoARTokenizer.from_pretrained(args.tokenizer).to(accelerator.device).eval().requires_grad_(False)
    text_encoder = TextEncoder.from_pretrained(args.text_encoder, accelerator.device, memoize=args.precompute)
    if args.pretrained_transformer:
        transformer = VideoARTransformer.from_pretrained(args.pretrained_transformer, dtype=torch.float32)  # trainable weights stay fp32 even from a bf16 export
    else:
        matching = {
            "latent_bits": video_tokenizer.config.latent_channels,
            "scale_schedule": list(video_tokenizer.config.scale_schedule),
            "text_hidden_size": text_encoder.model.config.hidden_size,
        }
        config = VideoARConfig.from_preset(args.transformer_preset, **matching, **json.loads(args.transformer_config or "{}"))
        transformer = VideoARTransformer(config)
    return video_tokenizer, text_encoder, transformer


def train(args, accelerator, video_tokenizer, text_encoder, transformer, save: Callable[[VideoARPipeline], None],
          project: str = "train_videoar") -> None:
    """The curriculum over the transformer's trainable parameters (all of them, or a LoRA's), with checkpoints,
    samples and logs under the tracker `project`; at the end, `save(pipeline)` on the main process."""
    output_dir = Path(args.output_dir)
    if args.gradient_checkpointing:  # transformers 5.23 renamed gradient_checkpointing_enable
        getattr(transformer, "activation_checkpointing_enable", transformer.gradient_checkpointing_enable)()
    transformer.train()

    stages = build_stages(args)
    schedule = StageSchedule(stages)
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=1.0, betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.weight_decay
    )  # lr 1: the schedule gives the absolute learning rate
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_at)
    transformer, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)
    ema = EMAModel(trainable, decay=args.ema_decay) if args.use_ema else None

    checkpoints, step, history = start_or_resume(args, accelerator, ema_tensors(ema), ema)
    accelerator.init_trackers(project, config=trackable(args))

    def pipeline() -> VideoARPipeline:
        pipe = VideoARPipeline(
            video_tokenizer=video_tokenizer, transformer=accelerator.unwrap_model(transformer),
            text_encoder=text_encoder.model, tokenizer=text_encoder.tokenizer,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save_samples(folder: Path, stage) -> None:
        model = accelerator.unwrap_model(transformer).eval()
        if ema:
            ema.store(trainable)
            ema.copy_to(trainable)
        folder.mkdir(parents=True, exist_ok=True)
        for i, prompt in enumerate(args.validation_prompts):
            video = pipeline()(
                prompt, num_frames=stage.num_frames, height=stage.resolution, width=stage.resolution,
                generator=torch.Generator().manual_seed(args.seed + i),
            ).frames[0]  # fmt: skip
            export_to_video(list(video), str(folder / f"{i:02d}.mp4"), fps=8)
        if ema:
            ema.restore(trainable)
        model.train()

    first_stage, first_local = schedule.locate(step) if step < schedule.total_steps else (len(stages), 0)
    for index in range(first_stage, len(stages)):
        stage = stages[index]
        start = first_local if index == first_stage else 0
        prepare = (lambda dataset: precompute_latents(dataset, video_tokenizer)) if args.precompute else None
        stage_batches = stage_batches_for(args, accelerator, stages, index, start, prepare)

        for local in range(start, stage.steps):
            lr, losses = lr_scheduler.get_last_lr()[0], []
            for batch in stage_batches.micro_batches(local):
                with accelerator.accumulate(transformer):
                    loss = training_loss(args, batch, video_tokenizer, text_encoder, transformer, accelerator)
                    if not all_finite(accelerator, loss):
                        stop_on_non_finite_loss(loss, step, checkpoints, transformer, history, ema_tensors(ema))
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad()
                    losses.append(loss.detach())
            step += 1
            if ema:
                ema.step(trainable)
            mean_loss = accelerator.reduce(torch.stack(losses).mean(), "mean").item()
            history.append(step, loss=mean_loss, lr=lr)
            if step % args.logging_steps == 0 or step == schedule.total_steps:
                bad_data = {f"data/{k}": v for k, v in stage_batches.data_stats().items() if v}
                accelerator.log({"loss": mean_loss, "lr": lr, **bad_data}, step=step)
                logger.info(f"step {step}/{schedule.total_steps} loss {mean_loss:.4f} lr {lr:.2e} {bad_data or ''}")
            if step % args.checkpointing_steps == 0:
                path = checkpoints.save(step, history, ema_tensors(ema))
                if accelerator.is_main_process and args.validation_prompts:
                    save_samples(output_dir / "samples" / path.name, stage)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema:
            ema.copy_to(trainable)
        history.save(output_dir / "history.json")
        history.plot(output_dir / "loss_curve.png", title=project)
        accelerator.unwrap_model(transformer).eval()
        save(pipeline())
    accelerator.end_training()


def main(args: argparse.Namespace) -> Path:
    accelerator = make_accelerator(args)
    pipeline_dir = Path(args.output_dir) / "pipeline"
    train(args, accelerator, *load_models(args, accelerator), save=lambda pipe: pipe.save_pretrained(pipeline_dir))
    return pipeline_dir


if __name__ == "__main__":
    run_script("train_videoar", main, parse_args)
