"""Resolutions and aspect ratios: the named templates of a schedule, the paper's 33x384x672 on the 4B preset, and
16:9 / 9:16 / 1:1 through the pipeline at tiny widths (docs/method.md §7)."""

import pytest
import torch

from videoar_hf import VideoARConfig, VideoARTransformer
from videoar_hf.scale_schedule import ASPECT_RATIOS, aspect_ratio_templates, get_scale_sizes
from videoar_hf.testing_utils import tiny_pipeline


def test_every_named_ratio_has_a_template_ending_at_each_side_of_the_schedule():
    templates = aspect_ratio_templates((1, 2, 4, 8, 16))
    assert set(templates) == set(ASPECT_RATIOS)
    assert templates["1:1"] == [(1, 1), (2, 2), (4, 4), (8, 8), (16, 16)]
    assert templates["16:9"][-1] == (9, 16) and templates["9:16"][-1] == (16, 9)
    for grids in templates.values():
        for h, w in grids:
            sizes = get_scale_sizes((1, 2, 4, 8, 16), h, w)
            assert sizes[-1] == (h, w), "the last scale is the grid itself"
            assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(sizes, sizes[1:])), "coarse to fine"


def test_the_4b_preset_serves_33_frames_at_384x672():
    config = VideoARConfig.from_preset("4B")
    sizes = get_scale_sizes(config.scale_schedule, 384 // 16, 672 // 16)
    assert len(sizes) == 13 and sizes[-1] == (24, 42)
    # the same schedule at a tiny width: the transformer runs a 24x42 latent frame (the token layout of 33 frames is
    # 9 of these)
    tiny = VideoARTransformer(VideoARConfig.from_preset("tiny", scale_schedule=list(config.scale_schedule), latent_bits=4)).eval()
    inputs = [torch.randn(1, 1, h, w, 4) for h, w in sizes]
    with torch.no_grad():
        out = tiny(inputs, torch.randn(1, 3, 32))
    assert out.logits.shape == (1, sum(h * w for h, w in sizes), 4)


@pytest.mark.parametrize("height, width", [(32, 32), (32, 56), (56, 32)])  # 1:1, 16:9 (7:4 at this size), 9:16
def test_the_pipeline_serves_square_wide_and_tall_videos(height, width):
    pipe = tiny_pipeline(scale_schedule=(1, 2, 4, 7))
    frames = pipe("a red circle moving left", num_frames=5, height=height, width=width).frames
    assert frames.shape == (1, 5, height, width, 3)


def test_an_unserved_size_names_the_nearest_served_ones():
    pipe = tiny_pipeline(scale_schedule=(1, 2, 4, 7))
    with pytest.raises(ValueError, match=r"40x64 .*Nearest served sizes: 32x56"):
        pipe("a red circle moving left", num_frames=5, height=40, width=64)
