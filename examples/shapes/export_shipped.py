#!/usr/bin/env python
"""Store a trained pipeline in bf16 (half the bytes; `from_pretrained` loads it as fp32) into the package folder.

    python examples/shapes/export_shipped.py outputs/shapes/transformer/pipeline src/videoar_hf/shipped/videoar-shapes
"""

import sys

import torch

from videoar_hf import VideoARPipeline


def main(source: str, target: str) -> None:
    pipe = VideoARPipeline.from_pretrained(source)
    pipe.to(dtype=torch.bfloat16).save_pretrained(target)
    reloaded = VideoARPipeline.from_pretrained(target)
    assert {m.dtype for m in (reloaded.video_tokenizer, reloaded.transformer, reloaded.text_encoder)} == {torch.float32}
    print(target)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: export_shipped.py SOURCE_PIPELINE TARGET_FOLDER")
    main(sys.argv[1], sys.argv[2])
