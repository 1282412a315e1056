#!/usr/bin/env python
"""How well a transformer predicts the finest scale's bits where the object is (examples/shapes/TUNING.md, sessions
14 and 17).

Real train-suite clips (17 frames) are encoded by the pipeline's own tokenizer and fed to its transformer teacher
forced: every coarser scale and earlier frame is true. Per shape it prints the agreement of the transformer's greedy
bits (with classifier-free guidance) with the true bits, on the finest-scale tokens that the object covers in first
and in later latent frames, and on the background. A tokenizer whose coarse scales pin the object down should leave
the finest scale more predictable.

    python examples/shapes/probe_bits.py PIPELINE_FOLDER [--clips 48] [--guidance 3]
"""

import argparse
from collections import defaultdict

import numpy as np
import torch

from videoar_hf import VideoARPipeline
from videoar_hf.evaluation import analyse_clip, prompt_for, reference_clip, train_suite
from videoar_hf.quantizer import unpack_scales
from videoar_hf.scale_schedule import get_scale_sizes


def latent_masks(masks: list, size: tuple[int, int], tokenizer) -> np.ndarray:
    """`(T', h, w)`: a latent cell is the object's when any of its pixels is, in any pixel frame of its latent frame."""
    (H, W), f, out = size, tokenizer.config.spatial_compression_ratio, []
    for t in range(tokenizer.num_latent_frames(len(masks))):
        union = np.zeros((H, W), dtype=bool)
        for i in range(tokenizer._first_pixel_frame(t), tokenizer._first_pixel_frame(t + 1)):  # the tokenizer's rule
            if masks[i] is not None:
                union |= masks[i]
        out.append(union.reshape(H // f, f, W // f, f).any(axis=(1, 3)))
    return np.stack(out)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="VideoARPipeline folder.")
    parser.add_argument("--clips", type=int, default=48, help="Train-suite cases (they cycle through the triples).")
    parser.add_argument("--guidance", type=float, default=3.0, help="Classifier-free guidance on the logits.")
    args = parser.parse_args()
    pipe = VideoARPipeline.from_pretrained(args.pipeline)
    tokenizer, transformer = pipe.video_tokenizer.float().eval(), pipe.transformer.float().eval()
    agree = defaultdict(list)  # (shape, region) -> per-bit agreement
    for triple, seed in train_suite(args.clips).cases:
        clip = reference_clip(triple, seed)
        video = torch.from_numpy(clip.video).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        latents = tokenizer.encode(video).latents
        scale_sizes = get_scale_sizes(transformer.config.scale_schedule, *latents.shape[-2:])
        pyramid = tokenizer.quantizer.residual_quantize(latents, scale_sizes)
        cond, cond_mask, uncond, uncond_mask = pipe.encode_prompt(prompt_for(triple, seed), do_classifier_free_guidance=True)
        logits = transformer(pyramid.scale_inputs, cond, cond_mask).logits
        if args.guidance != 1:
            null = transformer(pyramid.scale_inputs, uncond, uncond_mask).logits
            logits = null + args.guidance * (logits - null)
        T = latents.shape[2]
        finest = unpack_scales(logits, T, scale_sizes)[-1][0] > 0  # (T', h, w, d)
        right_Thw = (finest == pyramid.bits[-1][0]).float().mean(-1).numpy()
        masks = [frame.mask for frame in analyse_clip(clip.video).frames]
        object_Thw = latent_masks(masks, clip.video.shape[1:3], tokenizer)
        agree[triple.shape, "object, first frame"] += list(right_Thw[0][object_Thw[0]])
        agree[triple.shape, "object, later frames"] += list(right_Thw[1:][object_Thw[1:]])
        agree["all", "background"] += list(right_Thw[~object_Thw])
    print(f"{args.pipeline}: finest-scale bit agreement, teacher forced, guidance {args.guidance}")
    for (shape, region), values in sorted(agree.items()):
        print(f"  {shape:9s} {region:22s} {100 * np.mean(values):5.1f} %  ({len(values)} tokens)")


if __name__ == "__main__":
    main()
