#!/usr/bin/env python
"""Train the causal 3D bitwise video tokenizer (docs/method.md §2).

    accelerate launch examples/train_tokenizer.py \\
        --tokenizer_config '{"latent_channels": 16, "base_channels": 64}' \\
        --dataset shapes --stages examples/stages_shapes.yaml --output_dir out/tokenizer

Losses: L1 + L2 reconstruction, commitment and BSQ entropy penalty; optionally an LPIPS-style perceptual loss from a
transformers vision backbone (`--perceptual_model`), and a hinge GAN with a 3D discriminator and LeCAM from
`--gan_start_step` on. `--init_from_2d` inflates a 2D image tokenizer's safetensors weights into the 3D network
(the 2D kernel in the last temporal slice, docs/method.md §2). `--train_decoder_only` fine-tunes a trained tokenizer's
decoder and keeps its latents. The result is `output_dir/tokenizer`.
"""

import argparse
import inspect
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils import export_to_video
from safetensors.torch import load_file

from videoar_hf import VideoARTokenizer
from videoar_hf.atomic_directory import atomic_directory
from videoar_hf.discriminator import Discriminator3D
from videoar_hf.inflation import inflate_state_dict, reinflate_image_trained
from videoar_hf.sampling import uniform_noise
from videoar_hf.tokenizer_losses import PerceptualLoss, TokenizerLoss
from videoar_hf.training import Trainer, add_training_args, check_training_args, make_accelerator, run_script, training_config_from_args

logger = logging.getLogger("train_tokenizer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--tokenizer_config", default=None, help="JSON of VideoARTokenizer config fields for a new tokenizer, e.g. '{\"latent_channels\": 16}'; with --pretrained_tokenizer, fields that override its config (e.g. '{\"temporal_compression_ratio\": 2}': weights the new config no longer has are dropped and logged).")
    model.add_argument("--pretrained_tokenizer", default=None, help="Continue from this VideoARTokenizer folder instead.")
    model.add_argument("--reinflate", action="store_true", help="With --pretrained_tokenizer trained on images only: sum each kernel's temporal taps into the last slice, so video starts as each frame coded alone (docs/method.md §2 init).")
    model.add_argument("--train_decoder_only", action="store_true", help="With --pretrained_tokenizer: freeze the encoder and train the decoder alone, so the latents (and any transformer trained on them) stay valid; with a new scale_schedule in --tokenizer_config, the decoder learns the encoder's latents quantized on it.")
    model.add_argument("--colour_mix_prob", type=float, default=0.0, help="Probability of mixing a clip's RGB channels by a random non-negative 3x3 matrix (black stays black), so the tokenizer learns colours beyond its data's palette.")
    model.add_argument("--nested_dropout_prob", type=float, default=0.0, help="Probability that a step decodes only the first k scales (k uniform in 1..K-1), so the coarse scales must carry what matters most: where the object is and how big (nested dropout; our addition, the paper decodes the whole pyramid). 0 turns it off.")
    model.add_argument("--teacher_tokenizer", default=None, help="A trained tokenizer with a coarser latent grid (e.g. f = 8 for a new f = 4 one), the same bits, temporal compression and first scales: the new latents, area-pooled to its grid, are pulled to its latents, so the coarse scales' bits become its bits and a transformer trained on it keeps what it knew of them (our addition, TUNING.md session 34).")
    model.add_argument("--teacher_weight", type=float, default=1.0, help="Weight of the mean squared error between the pooled latents and --teacher_tokenizer's.")
    model.add_argument("--init_from_2d", default=None, help="A 2D image tokenizer's weights (.safetensors, LDM or Infinity key names) to inflate into the new tokenizer.")

    losses = parser.add_argument_group("losses (the paper gives no weights; the defaults are ours)")
    losses.add_argument("--l1_weight", type=float, default=1.0, help="L1 reconstruction weight.")
    losses.add_argument("--l2_weight", type=float, default=1.0, help="L2 reconstruction weight.")
    losses.add_argument("--foreground_weight", type=float, default=0.0, help="Extra L1/L2 weight on pixels unlike their frame's median colour, for sparse data (one object on a plain background); 0 turns it off.")
    losses.add_argument("--foreground_dilation", type=int, default=0, help="Pixels by which --foreground_weight reaches past the object's edge, so both sides of the edge weigh alike (no halo); 0 weighs the object alone.")
    losses.add_argument("--commitment_weight", type=float, default=0.25, help="Commitment weight (VQ-VAE / BSQ beta).")
    losses.add_argument("--entropy_weight", type=float, default=0.01, help="BSQ entropy penalty weight.")
    losses.add_argument("--perceptual_model", default=None, help="Folder of a transformers vision backbone (safetensors) for the LPIPS-style loss.")
    losses.add_argument("--perceptual_weight", type=float, default=0.1, help="Perceptual loss weight.")
    losses.add_argument("--gan_weight", type=float, default=0.0, help="Generator GAN weight; 0 turns the GAN off.")
    losses.add_argument("--gan_start_step", type=int, default=0, help="First step with the GAN terms (a warm-up without them before).")
    losses.add_argument("--lecam_weight", type=float, default=0.001, help="LeCAM regularization weight of the discriminator.")
    losses.add_argument("--discriminator_channels", type=int, default=32, help="Base width of the 3D discriminator.")
    losses.add_argument("--discriminator_learning_rate", type=float, default=1e-4, help="Discriminator learning rate (constant).")
    add_training_args(parser, learning_rate=1e-4)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_training_args(parser, args)
    if args.tokenizer_config is not None:
        try:
            json.loads(args.tokenizer_config)
        except json.JSONDecodeError as error:
            parser.error(f"--tokenizer_config is not valid JSON: {error}")
    for flag in ("gan_weight", "gan_start_step", "foreground_weight", "foreground_dilation", "teacher_weight"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag} must be >= 0, got {getattr(args, flag)}.")
    for flag in ("colour_mix_prob", "nested_dropout_prob"):
        if not 0 <= getattr(args, flag) <= 1:
            parser.error(f"--{flag} must be in [0, 1], got {getattr(args, flag)}.")
    for flag in ("init_from_2d", "pretrained_tokenizer", "perceptual_model", "teacher_tokenizer"):
        if getattr(args, flag) and not Path(getattr(args, flag)).exists():
            parser.error(f"--{flag} {getattr(args, flag)!r} does not exist.")
    if args.reinflate and not args.pretrained_tokenizer:
        parser.error("--reinflate needs --pretrained_tokenizer: it re-inflates a tokenizer trained on images.")
    if args.train_decoder_only and not args.pretrained_tokenizer:
        parser.error("--train_decoder_only needs --pretrained_tokenizer: a fresh encoder would never learn.")
    if args.teacher_tokenizer and args.train_decoder_only:
        parser.error("--teacher_tokenizer shapes the encoder's latents; --train_decoder_only freezes the encoder.")
    if args.init_from_2d and not args.init_from_2d.endswith(".safetensors"):
        parser.error("--init_from_2d must be a .safetensors file: weights are never read from pickles.")
    return args


def build_tokenizer(args) -> VideoARTokenizer:
    config = json.loads(args.tokenizer_config or "{}")
    if args.pretrained_tokenizer:
        tokenizer = load_pretrained_tokenizer(args.pretrained_tokenizer, config)
        return reinflate_image_trained(tokenizer) if args.reinflate else tokenizer
    try:
        tokenizer = VideoARTokenizer(**config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--tokenizer_config: {error}") from error
    if args.init_from_2d:
        inflated, unused, reinitialized = inflate_state_dict(load_file(args.init_from_2d), tokenizer)
        missing, _ = tokenizer.load_state_dict(inflated, strict=False)
        logger.info(f"Inflated {len(inflated) - len(reinitialized)} tensors from {args.init_from_2d}; unused 2D keys: {unused}; re-initialised: {reinitialized}; left at init: {missing}")
    return tokenizer


def load_pretrained_tokenizer(path: str, overrides: dict) -> VideoARTokenizer:
    """A trained tokenizer, its config changed by `overrides`, e.g. a smaller temporal compression (a temporal
    upsampler fewer). Every weight both configs share must keep its shape; diffusers logs the weights it drops and
    those it initialises afresh."""
    fields = set(inspect.signature(VideoARTokenizer.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"--tokenizer_config: {unknown} are not VideoARTokenizer config fields; allowed: {sorted(fields)}.")
    try:
        return VideoARTokenizer.from_pretrained(path, **overrides)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"--tokenizer_config {overrides} does not fit the weights of {path}: {error}") from error


def load_teacher(path: str, student: VideoARTokenizer) -> VideoARTokenizer:
    """The frozen `--teacher_tokenizer`, refused unless pooling the student's latents gives latents of its kind."""
    teacher = VideoARTokenizer.from_pretrained(path).eval().requires_grad_(False)
    ours, theirs = student.config, teacher.config
    problems = [
        f"{field} {getattr(theirs, field)} (the new tokenizer's: {getattr(ours, field)})"
        for field in ("latent_channels", "temporal_compression_ratio")
        if getattr(ours, field) != getattr(theirs, field)
    ]
    if theirs.spatial_compression_ratio % ours.spatial_compression_ratio:
        problems.append(f"spatial_compression_ratio {theirs.spatial_compression_ratio}, not a multiple of "
                        f"{ours.spatial_compression_ratio}")  # fmt: skip
    if list(ours.scale_schedule[: len(theirs.scale_schedule)]) != list(theirs.scale_schedule):
        problems.append(f"scale_schedule {list(theirs.scale_schedule)}, not the start of {list(ours.scale_schedule)}")
    if problems:
        raise ValueError(f"--teacher_tokenizer {path} does not fit the new tokenizer: " + "; ".join(problems) + ".")
    return teacher


def pooled_latent_error(latents: torch.Tensor, teacher_latents: torch.Tensor) -> torch.Tensor:
    """Mean squared error between `latents`, area-pooled to the teacher's latent grid, and the teacher's latents."""
    return F.mse_loss(F.adaptive_avg_pool3d(latents.float(), teacher_latents.shape[-3:]), teacher_latents.float())


def mix_colours(video_BCTHW: torch.Tensor, prob: float, generator=None) -> torch.Tensor:
    """With probability `prob` per clip, new RGB = M @ RGB in [0, 1] for a random M in [0, 1]^(3x3): a pure red
    becomes any colour, and black stays black. `generator` may be one per clip."""
    B = video_BCTHW.shape[0]
    chosen_B = (uniform_noise((B,), generator, "cpu") < prob).to(video_BCTHW.device)
    mix_B33 = uniform_noise((B, 3, 3), generator, "cpu").to(video_BCTHW)
    mixed = torch.einsum("bij,bjthw->bithw", mix_B33, (video_BCTHW + 1) / 2).clamp(0, 1) * 2 - 1
    return torch.where(chosen_B.view(B, 1, 1, 1, 1), mixed, video_BCTHW)


def psnr(video: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, videos in [-1, 1]."""
    mse = ((reconstruction.float().clamp(-1, 1) - video.float()) / 2).pow(2).mean()
    return -10 * torch.log10(mse.clamp_min(1e-10))


@torch.no_grad()
def reconstruction_pairs(tokenizer, batch: dict) -> torch.Tensor:
    """Side by side, input | reconstruction: `(B, 3, T, H, 2W)` in [0, 1]."""
    video = batch["video"][:4].to(tokenizer.device, tokenizer.dtype)
    reconstruction = tokenizer(video, return_dict=False)[0].clamp(-1, 1)
    return torch.cat([video, reconstruction], dim=-1).float().add(1).div(2)


def save_videos(videos: torch.Tensor, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, clip in enumerate(videos):
        export_to_video(list(clip.permute(1, 2, 3, 0).cpu().numpy().astype(np.float32)), str(folder / f"{i:02d}.mp4"), fps=8)


class TokenizerTrainer(Trainer):
    """The tokenizer's loss step, the optional discriminator step after it, and reconstructions at checkpoints."""

    def __init__(self, accelerator, config, tokenizer, loss_fn: TokenizerLoss, colour_mix_prob: float,
                 nested_dropout_prob: float = 0.0, teacher: VideoARTokenizer | None = None, teacher_weight: float = 1.0):  # fmt: skip
        super().__init__(accelerator, config, tokenizer)
        self.teacher = teacher and teacher.to(accelerator.device)
        self.teacher_weight = teacher_weight
        self.loss_fn = loss_fn
        self.colour_mix_prob = colour_mix_prob
        self.nested_dropout_prob = nested_dropout_prob
        self.gan_inputs = None

    def decoded_scales(self, video: torch.Tensor, generator: torch.Generator) -> int | None:
        """None (the whole pyramid), or with probability `nested_dropout_prob` a number of scales in 1..K-1."""
        num_scales = len(self.unwrapped.scale_sizes(*video.shape[-2:]))
        drop, which = uniform_noise((2,), generator, "cpu").tolist()
        return 1 + int(which * (num_scales - 1)) if drop < self.nested_dropout_prob and num_scales > 1 else None

    def training_step(self, batch, generators, step):
        video = batch["video"].to(self.accelerator.device)
        if self.colour_mix_prob:
            video = mix_colours(video, self.colour_mix_prob, generators)
        num_scales = self.decoded_scales(video, generators[0])
        # a tuple: accelerate's mixed-precision output conversion cannot rebuild diffusers' output classes
        reconstruction, latents, _, commitment_loss = self.model(video, return_dict=False, num_scales=num_scales)
        discriminator = self.extra_models[0] if self.extra_models else None
        loss, parts = self.loss_fn(video, reconstruction, latents, commitment_loss, step, discriminator)
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher.encode(video.to(self.teacher.dtype)).latents
            teacher_loss = pooled_latent_error(latents, target)
            loss, parts = loss + self.teacher_weight * teacher_loss, parts | {"teacher": teacher_loss.detach()}
        self.gan_inputs = (video, reconstruction.detach()) if self.loss_fn.gan_active(step) else None
        quality = {"psnr" if num_scales is None else "nested_psnr": psnr(video, reconstruction.detach())}
        return loss, {**quality, **{f"{k}_loss": v for k, v in parts.items()}}

    def auxiliary_step(self, step):
        if self.gan_inputs is None:
            return {}
        discriminator, (optimizer,) = self.extra_models[0], self.extra_optimizers
        loss, parts = self.loss_fn.discriminator_loss(discriminator, *self.gan_inputs)
        self.accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        return {f"discriminator_{k}_loss": v for k, v in parts.items()}

    def extra_state(self):
        return {f"lecam.{k}": v for k, v in self.loss_fn.lecam.state_dict().items()}

    def write_samples(self, folder, stage, batch):
        pairs = reconstruction_pairs(self.unwrapped, batch)  # every process: a sharded model needs them all
        if self.accelerator.is_main_process:
            save_videos(pairs, folder)

    def save_model(self, state_dict):
        model = VideoARTokenizer.from_config(self.unwrapped.config)
        model.load_state_dict(state_dict)
        with atomic_directory(self.config.output_dir / "tokenizer") as tmp:
            model.save_pretrained(tmp)


def main(args: argparse.Namespace) -> Path:
    config = training_config_from_args(args, project="train_tokenizer")
    accelerator = make_accelerator(config, args.mixed_precision, args.report_to)
    tokenizer = build_tokenizer(args)
    for stage in config.stages:  # fail before training when a stage's size does not fit the tokenizer
        tokenizer.validate_video_shape(stage.num_frames, stage.resolution, stage.resolution)
    if args.gradient_checkpointing:
        tokenizer.enable_gradient_checkpointing()
    tokenizer.train()
    if args.train_decoder_only:
        tokenizer.encoder.requires_grad_(False)
    perceptual = PerceptualLoss.from_pretrained(args.perceptual_model) if args.perceptual_model else None
    loss_fn = TokenizerLoss(
        l1_weight=args.l1_weight, l2_weight=args.l2_weight, foreground_weight=args.foreground_weight,
        foreground_dilation=args.foreground_dilation, perceptual=perceptual, perceptual_weight=args.perceptual_weight,
        commitment_weight=args.commitment_weight, entropy_weight=args.entropy_weight, gan_weight=args.gan_weight,
        lecam_weight=args.lecam_weight, gan_start_step=args.gan_start_step,
    ).to(accelerator.device)  # fmt: skip

    teacher = load_teacher(args.teacher_tokenizer, tokenizer) if args.teacher_tokenizer else None
    trainer = TokenizerTrainer(accelerator, config, tokenizer, loss_fn, args.colour_mix_prob, args.nested_dropout_prob,
                               teacher, args.teacher_weight)  # fmt: skip
    if args.gan_weight > 0:
        discriminator = Discriminator3D(base_channels=args.discriminator_channels, norm_num_groups=8)
        optimizer = torch.optim.AdamW(discriminator.parameters(), lr=args.discriminator_learning_rate, betas=config.adam_betas)
        trainer.setup(extra_models=(discriminator,), extra_optimizers=(optimizer,))
    trainer.train()
    return config.output_dir / "tokenizer"


if __name__ == "__main__":
    run_script("train_tokenizer", main, parse_args)
