#!/usr/bin/env python
"""Store a trained pipeline in bf16 (half the bytes; `from_pretrained` loads it as fp32) into the package folder;
`--context_frames`, `--guidance_frames`, `--history_guidance_scale`, `--history_frames`, `--history_guidance_start`
and `--top_p` set the transformer's sampling defaults (the `VideoARConfig` fields of those names).

    python examples/shapes/export_shipped.py outputs/shapes/transformer/pipeline src/videoar_hf/shipped/videoar-shapes
"""

import argparse

import torch

from videoar_hf import VideoARPipeline

SAMPLING_DEFAULTS = {"context_frames": int, "guidance_frames": int, "history_guidance_scale": float, "history_frames": int,
                     "history_guidance_start": int, "top_p": float}


def main(source: str, target: str, **sampling_defaults) -> None:
    pipe = VideoARPipeline.from_pretrained(source)
    for field, value in sampling_defaults.items():
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
    for field, kind in SAMPLING_DEFAULTS.items():
        parser.add_argument(f"--{field}", type=kind, default=None, help=f"the transformer's default `{field}`")
    args = vars(parser.parse_args())
    main(args.pop("source"), args.pop("target"), **args)
