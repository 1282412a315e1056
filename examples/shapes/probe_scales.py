"""Which scale of the transformer loses the squares (examples/shapes/TUNING.md)?

Real Shapes clips are encoded; then, one scale at a time, that scale's bits are replaced by the transformer's greedy
prediction from the true earlier blocks (teacher forcing, every other scale true), decoded, and read back by the
evaluator. A scale whose prediction turns squares into circles is where the model falls short. Prints a Markdown
table: per scale, the bit agreement with the true bits, the median box fill of the main object, and the clips read as
the right shape.

    python examples/shapes/probe_scales.py PIPELINE [--shape square] [--clips 16] [--guidance 3]
"""

import argparse

import numpy as np
import torch

from videoar_hf import VideoARPipeline
from videoar_hf.evaluation import TRAIN_SEED_START, analyse_clip, box_fill, prompt_for, reference_clip
from videoar_hf.quantizer import unpack_scales
from videoar_hf.shapes import SHAPES, training_triples


def read_back(pipe, bits, scale_sizes, latent_size) -> list:
    """Decode per-scale bits `[(B, T, h, w, d)]` and analyse each clip."""
    features = pipe.video_tokenizer.quantizer.bits_to_features(bits, latent_size)
    frames = pipe.video_tokenizer.decode(features.to(pipe.video_tokenizer.dtype)).sample.float()
    frames = ((frames / 2 + 0.5).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 4, 1).numpy()
    return [analyse_clip(clip) for clip in frames]


def summary(analyses, shape: str) -> tuple[float, int]:
    fills = [box_fill(frame.mask) for clip in analyses for frame in clip.frames if frame.mask is not None]
    return float(np.median(fills)) if fills else float("nan"), sum(clip.shape == shape for clip in analyses)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="Pipeline folder.")
    parser.add_argument("--shape", default="square", choices=SHAPES, help="Shape of the real clips.")
    parser.add_argument("--clips", type=int, default=16, help="Real clips, from the train suite's seeds.")
    parser.add_argument("--num_frames", type=int, default=17, help="Frames per clip (1 + 4k).")
    parser.add_argument("--guidance", type=float, default=3.0, help="Classifier-free guidance on the logits (1: none).")
    args = parser.parse_args()

    pipe = VideoARPipeline.from_pretrained(args.pipeline)
    transformer, quantizer = pipe.transformer, pipe.video_tokenizer.quantizer
    triples = [triple for triple in training_triples() if triple.shape == args.shape]
    cases = [(triples[i % len(triples)], TRAIN_SEED_START + i) for i in range(args.clips)]
    clips = np.stack([reference_clip(*case, num_frames=args.num_frames).video for case in cases])
    video = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    latents = pipe.video_tokenizer.encode(video.to(pipe.video_tokenizer.dtype)).latents.float()
    latent_size = tuple(latents.shape[-2:])
    scale_sizes = transformer.scale_sizes(*latent_size)
    truth = quantizer.residual_quantize(latents, scale_sizes)

    prompts = [prompt_for(*case) for case in cases]
    embeds, mask, negative, negative_mask = pipe.encode_prompt(prompts, do_classifier_free_guidance=args.guidance != 1)
    logits = transformer(truth.scale_inputs, text_hidden_states=embeds, text_attention_mask=mask).logits
    if args.guidance != 1:
        unconditional = transformer(truth.scale_inputs, text_hidden_states=negative, text_attention_mask=negative_mask).logits
        logits = unconditional + args.guidance * (logits - unconditional)
    predicted = unpack_scales(logits > 0, latents.shape[2], scale_sizes)

    print(f"{len(cases)} real {args.shape} clips, {args.num_frames} frames, guidance {args.guidance}\n")
    print("| bits | bit agreement % | median box fill | read as " + args.shape + " |\n|---|---|---|---|")
    fill, right = summary(read_back(pipe, truth.bits, scale_sizes, latent_size), args.shape)
    print(f"| all true | 100 | {fill:.3f} | {right}/{len(cases)} |")
    for k, (h, w) in enumerate(scale_sizes):
        bits = list(truth.bits)
        bits[k] = predicted[k]
        agreement = (predicted[k] == truth.bits[k]).float().mean().item() * 100
        fill, right = summary(read_back(pipe, bits, scale_sizes, latent_size), args.shape)
        print(f"| scale {h}x{w} predicted | {agreement:.1f} | {fill:.3f} | {right}/{len(cases)} |")


if __name__ == "__main__":
    main()
