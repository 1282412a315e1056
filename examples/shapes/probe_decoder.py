"""How much of the long suite can a tokenizer's decoder keep (examples/shapes/TUNING.md)?

The long suite's own real clips (bouncing, `--frames` long) go through encode -> quantize -> decode, and the
evaluator scores the reconstructions frame by frame exactly as it scores generated videos. A transformer that
predicts every bit right can do no better, so this is the ceiling the decoder sets. Prints a Markdown table: per
shape, the share of frames that keep the colour and the shape, bounce consistency, and the median box fill; then
the held-out PSNR.

    python examples/shapes/probe_decoder.py TOKENIZER_FOLDER [--clips 24] [--frames 129]
"""

import argparse

import numpy as np
import torch

from videoar_hf import VideoARTokenizer
from videoar_hf.evaluation import (
    analyse_clip,
    box_fill,
    held_out_suite,
    long_suite,
    reconstruct_clip,
    reference_clip,
    score_frames,
    tokenizer_psnr,
)
from videoar_hf.shapes import SHAPES


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokenizer", help="VideoARTokenizer folder.")
    parser.add_argument("--clips", type=int, default=24, help="Long-suite cases (they cycle through the triples).")
    parser.add_argument("--frames", type=int, default=129, help="Frames per clip.")
    args = parser.parse_args()
    tokenizer = VideoARTokenizer.from_pretrained(args.tokenizer).eval()

    scores = {shape: [] for shape in SHAPES}
    fills = {shape: [] for shape in SHAPES}
    for triple, seed in long_suite(args.clips).cases:
        clip = reference_clip(triple, seed, num_frames=args.frames, bounce=True).video
        analysis = analyse_clip(reconstruct_clip(tokenizer, clip))
        scores[triple.shape].append(score_frames(analysis, triple))
        fills[triple.shape] += [box_fill(frame.mask) for frame in analysis.frames if frame.mask is not None]

    print("| shape | clips | colour kept % | shape kept % | bounce % | median box fill |")
    print("|---|---|---|---|---|---|")
    for shape in SHAPES:
        mean = {key: 100 * np.mean([s[key] for s in scores[shape]]) for key in ("colour_kept", "shape_kept", "bounce")}
        print(f"| {shape} | {len(scores[shape])} | {mean['colour_kept']:.1f} | {mean['shape_kept']:.1f} | "
              f"{mean['bounce']:.1f} | {np.median(fills[shape]):.3f} |")  # fmt: skip
    everything = [s for shape in SHAPES for s in scores[shape]]
    print(f"| all | {len(everything)} | " + " | ".join(
        f"{100 * np.mean([s[key] for s in everything]):.1f}" for key in ("colour_kept", "shape_kept", "bounce")
    ) + " | |")  # fmt: skip
    held_out = [reference_clip(triple, seed).video for triple, seed in held_out_suite().cases]
    print(f"\nheld-out PSNR: {tokenizer_psnr(tokenizer, held_out):.2f} dB")


if __name__ == "__main__":
    main()
