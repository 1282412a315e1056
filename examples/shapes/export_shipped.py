#!/usr/bin/env python
"""Store a trained pipeline in bf16 (half the bytes; `from_pretrained` loads it as fp32) into the package folder;
`--context_frames` and `--guidance_frames` set the transformer's sampling defaults for long videos
(`VideoARConfig.context_frames`, `VideoARConfig.guidance_frames`).

    python examples/shapes/export_shipped.py outputs/shapes/transformer/pipeline src/videoar_hf/shipped/videoar-shapes
"""

import argparse

import torch

from videoar_hf import VideoARPipeline


def main(source: str, target: str, context_frames: int | None = None, guidance_frames: int | None = None) -> None:
    pipe = VideoARPipeline.from_pretrained(source)
    for field, value in (("context_frames", context_frames), ("guidance_frames", guidance_frames)):
        if value is not None:
            setattr(pipe.transformer.config, field, value)
    pipe.transformer.config.validate()
    pipe.to(dtype=torch.bfloat16).save_pretrained(target)
    reloaded = VideoARPipeline.from_pretrained(target)
    assert {m.dtype for m in (reloaded.video_tokenizer, reloaded.transformer, reloaded.text_encoder)} == {torch.float32}
    print(target)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="the trained pipeline folder")
    parser.add_argument("target", help="where the bf16 copy goes")
    parser.add_argument("--context_frames", type=int, default=None, help="the transformer's default context")
    parser.add_argument("--guidance_frames", type=int, default=None, help="the transformer's default guided frames")
    args = parser.parse_args()
    main(args.source, args.target, args.context_frames, args.guidance_frames)
