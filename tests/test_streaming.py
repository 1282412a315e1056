import numpy as np
import PIL.Image
import pytest
import torch

PROMPT = "a red circle moving left"


def stream(pipe, seed=0, **kwargs):
    return pipe.stream(PROMPT, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"num_frames": 9, "guidance_scale": 1.0}, {"image": np.full((32, 32, 3), 0.5)}])
def test_streamed_chunks_concatenate_to_the_normal_call(tiny_pipe, kwargs):
    chunks = list(stream(tiny_pipe, seed=3, **kwargs))
    whole = tiny_pipe(PROMPT, generator=torch.Generator().manual_seed(3), **kwargs).frames
    num_frames = kwargs.get("num_frames", 17)
    assert [c.shape[1] for c in chunks] == [1] + [4] * ((num_frames - 1) // 4)
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), whole, atol=1e-6)


def test_first_frames_arrive_before_the_last_latent_frame_is_sampled(tiny_pipe):
    calls = []
    tiny_pipe.transformer.layers[0].register_forward_hook(lambda *_: calls.append(1))
    chunks = stream(tiny_pipe, num_frames=17)
    first = next(chunks)
    scales = len(tiny_pipe.video_tokenizer.config.scale_schedule)
    assert first.shape[1] == 1
    assert len(calls) == scales  # one latent frame of 5: only its scales have run
    rest = list(chunks)
    assert len(rest) == 4 and len(calls) == 5 * scales


def test_stream_output_types(tiny_pipe):
    pil = next(stream(tiny_pipe, num_frames=5, output_type="pil"))
    assert isinstance(pil[0][0], PIL.Image.Image) and len(pil[0]) == 1
    pt = next(stream(tiny_pipe, num_frames=5, output_type="pt"))
    assert isinstance(pt, torch.Tensor) and pt.shape == (1, 1, 3, 32, 32)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"output_type": "latent"}, "output_type"), ({"num_frames": 6}, "num_frames"), ({"top_p": 0}, "top_p")],
)
def test_bad_input_fails_on_the_call_not_on_the_first_chunk(tiny_pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        stream(tiny_pipe, **kwargs)


def test_an_abandoned_stream_leaves_the_decoder_whole(tiny_pipe):
    chunks = stream(tiny_pipe)
    next(chunks)
    chunks.close()
    assert not any(getattr(m, "streaming", False) for m in tiny_pipe.video_tokenizer.decoder.modules())
    a = tiny_pipe(PROMPT, generator=torch.Generator().manual_seed(0)).frames
    b = np.concatenate(list(stream(tiny_pipe)), axis=1)
    np.testing.assert_allclose(a, b, atol=1e-6)
