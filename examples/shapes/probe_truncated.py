#!/usr/bin/env python
"""What each scale of a tokenizer's pyramid says about the object (examples/shapes/TUNING.md, session 16).

Real train-suite clips (17 frames) go through encode -> quantize, and the decoder sees the reconstruction of the
first k scales only, for every k. Per k it prints the PSNR, how far the main object's box centre lies from the true
one and how well its box overlaps the true box; on the whole pyramid also the squares' median box fill and how many
read square. A tokenizer whose coarse scales pin the object down (nested dropout, `train_tokenizer.py
--nested_dropout_prob`) should place the box right from fewer scales.

    python examples/shapes/probe_truncated.py TOKENIZER_FOLDER [--clips 48]
"""

import argparse

import numpy as np
import torch

from videoar_hf import VideoARTokenizer
from videoar_hf.evaluation import SQUARE_MIN_FILL, analyse_clip, box_fill, reference_clip, train_suite


def box_of(mask_HW: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask_HW)
    return cols.min(), rows.min(), cols.max() + 1, rows.max() + 1


def iou(a, b) -> float:
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokenizer", help="VideoARTokenizer folder.")
    parser.add_argument("--clips", type=int, default=48, help="Train-suite cases (they cycle through the triples).")
    args = parser.parse_args()
    tokenizer = VideoARTokenizer.from_pretrained(args.tokenizer).eval()
    num_scales = len(tokenizer.config.scale_schedule)
    rows = {k: {"psnr": [], "centre": [], "iou": []} for k in range(1, num_scales + 1)}
    square_fills = []
    for triple, seed in train_suite(args.clips).cases:
        clip = reference_clip(triple, seed)
        video = torch.from_numpy(clip.video).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        truth = analyse_clip(clip.video)
        latents = tokenizer.encode(video).latents  # once: only the quantizer's truncation differs between the k
        for k in rows:
            sample = tokenizer.decode(tokenizer.quantize(latents, num_scales=k).features).sample
            frames = (sample[0].clamp(-1, 1) / 2 + 0.5).permute(1, 2, 3, 0).numpy()
            mse = float(np.mean((frames - clip.video / 255.0) ** 2))
            rows[k]["psnr"].append(-10 * np.log10(max(mse, 1e-10)))
            for made, real, centre in zip(analyse_clip(frames).frames, truth.frames, clip.centres):
                if made.mask is None:
                    rows[k]["centre"].append(np.inf)
                    rows[k]["iou"].append(0.0)
                    continue
                x0, y0, x1, y1 = box_of(made.mask)
                rows[k]["centre"].append(float(np.hypot((x0 + x1 - 1) / 2 - centre[0], (y0 + y1 - 1) / 2 - centre[1])))
                rows[k]["iou"].append(iou(box_of(made.mask), box_of(real.mask)))
                if k == num_scales and triple.shape == "square":
                    square_fills.append(box_fill(made.mask))
    print("| scales decoded | PSNR dB | box centre error px (median / 90th pct) | box IoU (median) |")
    print("|---|---|---|---|")
    for k, row in rows.items():
        centre = np.array(row["centre"])
        print(f"| {k} | {np.mean(row['psnr']):.2f} | {np.median(centre):.2f} / {np.percentile(centre, 90):.2f} | "
              f"{np.median(row['iou']):.3f} |")  # fmt: skip
    fills = np.array(square_fills)
    print(f"\nsquares, whole pyramid: median box fill {np.median(fills):.3f}, {np.mean(fills >= SQUARE_MIN_FILL):.0%} of frames >= {SQUARE_MIN_FILL}")


if __name__ == "__main__":
    main()
