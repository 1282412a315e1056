#!/usr/bin/env python
"""A tokenizer's decoder one residual block deeper per level, the encoder untouched (examples/shapes/TUNING.md,
session 17). Each new block starts as an identity (its last convolution zero), so the deepened tokenizer decodes
exactly as the old one until `train_tokenizer.py --train_decoder_only` trains it; the latents never change, so a
transformer trained on the old tokenizer keeps working.

    python examples/shapes/deepen_decoder.py TOKENIZER_FOLDER OUTPUT_FOLDER
"""

import sys

import torch

from videoar_hf import VideoARTokenizer


@torch.no_grad()
def main(source: str, output: str) -> None:
    old = VideoARTokenizer.from_pretrained(source, torch_dtype=torch.float32)
    config = {key: value for key, value in old.config.items() if not key.startswith("_")}
    config["decoder_num_res_blocks"] = (config.get("decoder_num_res_blocks") or config["num_res_blocks"]) + 1
    new = VideoARTokenizer(**config)
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    new_blocks = {f"decoder.up.{i}.block.{len(level.block) - 1}" for i, level in enumerate(new.decoder.up)}
    outside = [key for key in missing if not any(key.startswith(block + ".") for block in new_blocks)]
    if unexpected or outside:
        raise RuntimeError(f"weights that do not fit: unexpected {unexpected}, missing outside the new blocks {outside}")
    for level in new.decoder.up:
        for parameter in level.block[-1].conv2.parameters():
            parameter.zero_()  # the residual branch adds nothing: the block is an identity
    video = torch.rand(1, 3, 5, config["sample_size"], config["sample_size"]) * 2 - 1
    assert torch.allclose(new.eval()(video).sample, old.eval()(video).sample, atol=1e-5)
    new.save_pretrained(output)
    print(f"decoder parameters {sum(p.numel() for p in old.decoder.parameters()):,} -> "
          f"{sum(p.numel() for p in new.decoder.parameters()):,}; saved to {output}")  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:3])
