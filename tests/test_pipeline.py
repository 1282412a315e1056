import json
import logging
import os
import shutil

import numpy as np
import PIL.Image
import pytest
import torch

from videoar_hf import VideoARPipeline, VideoARPipelineOutput, VideoARTokenizer, VideoARTransformer
from videoar_hf.guidance import falling_guidance, guidance_table, rising_guidance
from videoar_hf.testing_utils import offline_hub_repo, tiny_pipeline

PROMPT = "a red circle moving left"


def generate(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("output_type", "latent")
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **kwargs).frames


def count_forward_passes(pipe):
    calls = []
    pipe.transformer.layers[0].register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("num_frames, guidance_scale", [(17, 3.0), (9, 1.0), (1, "class-conditional")])
def test_forward_passes_equal_latent_frames_times_scales(tiny_pipe, num_frames, guidance_scale):
    calls = count_forward_passes(tiny_pipe)
    generate(tiny_pipe, num_frames=num_frames, guidance_scale=guidance_scale)
    latent_frames = 1 + (num_frames - 1) // 4
    assert len(calls) == latent_frames * 3


def test_guidance_runs_cond_and_uncond_in_one_batched_pass(tiny_pipe):
    batch_sizes = []
    tiny_pipe.transformer.layers[0].register_forward_hook(lambda m, args, out: batch_sizes.append(args[0].shape[0]))
    generate(tiny_pipe, num_frames=5, guidance_scale=4.0)
    assert batch_sizes == [2] * 6
    batch_sizes.clear()
    generate(tiny_pipe, num_frames=5, guidance_scale=1.0)
    assert batch_sizes == [1] * 6


def test_text_prefix_is_encoded_once_per_call(tiny_pipe):
    calls = []
    tiny_pipe.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    tiny_pipe(["a red circle", "a blue square"], num_frames=9, output_type="latent")
    assert len(calls) == 1


def test_same_seed_same_video_and_different_seed_different_video(tiny_pipe):
    a = generate(tiny_pipe, seed=1, output_type="np")
    b = generate(tiny_pipe, seed=1, output_type="np")
    c = generate(tiny_pipe, seed=2, output_type="np")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_top_p_defaults_to_the_config_and_a_call_overrides_it(tiny_pipe, tmp_path, monkeypatch):
    sampled, greedy = generate(tiny_pipe, seed=5), generate(tiny_pipe, seed=5, top_k=1)
    assert not torch.equal(sampled, greedy)
    monkeypatch.setattr(tiny_pipe.transformer.config, "top_p", 0.5)  # every bit's likelier value has p >= 0.5
    assert torch.equal(generate(tiny_pipe, seed=5), greedy)
    assert torch.equal(generate(tiny_pipe, seed=5, top_p=1.0), sampled)
    tiny_pipe.save_pretrained(tmp_path)
    assert VideoARPipeline.from_pretrained(tmp_path).transformer.config.top_p == 0.5


@pytest.mark.parametrize("top_p", [0.0, 1.5, float("nan"), True])
def test_a_bad_config_top_p_is_named(top_p):
    from videoar_hf import VideoARConfig

    with pytest.raises(Exception, match="top_p"):
        VideoARConfig.from_preset("tiny", top_p=top_p)


def test_batch_with_generator_list_equals_prompts_one_by_one(tiny_pipe):
    prompts = ["a red circle moving left", "a white triangle slides up quickly"]
    batched = tiny_pipe(
        prompts, generator=[torch.Generator().manual_seed(s) for s in (3, 4)], output_type="latent"
    ).frames
    for i, (prompt, seed) in enumerate(zip(prompts, (3, 4))):
        alone = generate(tiny_pipe, prompt, seed=seed)
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=0)


def test_output_types(tiny_pipe):
    np_frames = generate(tiny_pipe, output_type="np", num_frames=5)
    assert np_frames.shape == (1, 5, 32, 32, 3) and np_frames.min() >= 0 and np_frames.max() <= 1
    pt_frames = generate(tiny_pipe, output_type="pt", num_frames=5)
    assert pt_frames.shape == (1, 5, 3, 32, 32)
    np.testing.assert_allclose(pt_frames.permute(0, 1, 3, 4, 2).numpy(), np_frames, atol=1e-6)
    pil_frames = generate(tiny_pipe, output_type="pil", num_frames=5)
    assert len(pil_frames) == 1 and len(pil_frames[0]) == 5 and isinstance(pil_frames[0][0], PIL.Image.Image)
    latents = generate(tiny_pipe, output_type="latent", num_frames=5)
    assert latents.shape == (1, 8, 2, 4, 4)
    with torch.no_grad():
        decoded = tiny_pipe.video_tokenizer.decode(latents).sample
    np.testing.assert_allclose(
        tiny_pipe.video_processor.postprocess_video(decoded, "np"), np_frames, atol=1e-6
    )
    out = tiny_pipe(PROMPT, num_frames=5, num_videos_per_prompt=2, return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == (2, 5, 32, 32, 3)
    assert isinstance(tiny_pipe(PROMPT, num_frames=1), VideoARPipelineOutput)


def test_latents_are_sums_of_bsq_codes(tiny_pipe):
    # every latent is a sum of upsampled +-1/sqrt(d) codes: at the 1x1 first scale, exactly one code
    latents = generate(tiny_pipe, output_type="latent", num_frames=1, guidance_scale=1.0)
    assert latents.shape == (1, 8, 1, 4, 4)
    assert torch.isfinite(latents).all() and latents.abs().max() <= 3 / 8**0.5 + 1e-6


def test_progress_bar_counts_steps_and_can_be_configured(capsys):
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=False, desc="videoar")
    generate(pipe, num_frames=5)
    err = capsys.readouterr().err
    assert "videoar" in err and "6/6" in err
    pipe.set_progress_bar_config(disable=True)
    generate(pipe, num_frames=5)
    assert capsys.readouterr().err == ""


def test_callback_on_step_end_sees_every_step_and_can_replace_latents(tiny_pipe):
    seen = []

    def callback(pipe, step, frame_scale, kwargs):
        seen.append((step, frame_scale, kwargs["logits"].shape))
        if frame_scale == (1, 2):
            return {"latents": torch.zeros_like(kwargs["latents"])}
        return {}

    latents = generate(
        tiny_pipe, num_frames=9, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents", "logits"]
    )
    assert [s for s, _, _ in seen] == list(range(9))
    assert seen[4][1] == (1, 1) and seen[4][2] == (1, 4, 8)
    assert latents[:, :, :2].abs().sum() == 0 and latents[:, :, 2].abs().sum() > 0


def test_image_to_video_starts_from_the_encoded_image(tiny_pipe):
    image = PIL.Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
    latents = generate(tiny_pipe, image=image, num_frames=9)
    pixels = tiny_pipe.video_processor.preprocess(image, height=32, width=32)[:, :, None]
    encoded = tiny_pipe.video_tokenizer.encode(pixels).latents
    quantized = tiny_pipe.video_tokenizer.quantize(encoded).features
    torch.testing.assert_close(latents[:, :, :1], quantized)
    # the continuation is sampled, not copied
    assert not torch.allclose(latents[:, :, 1], latents[:, :, 0])


def test_one_conditioning_image_per_prompt(tiny_pipe):
    images = [PIL.Image.new("RGB", (32, 32), color) for color in ("red", "blue")]
    latents = tiny_pipe(
        ["a red circle", "a blue circle"], image=images, num_videos_per_prompt=2, num_frames=5, output_type="latent"
    ).frames
    assert latents.shape[0] == 4
    torch.testing.assert_close(latents[0, :, 0], latents[1, :, 0])
    assert not torch.allclose(latents[1, :, 0], latents[2, :, 0])
    with pytest.raises(ValueError, match="image.*3 clips for 2 prompts"):
        tiny_pipe(["a", "b"], image=images + images[:1], num_frames=5)


def test_video_continuation_keeps_the_given_latent_frames(tiny_pipe):
    video = [PIL.Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)) for i in range(5)]
    latents = generate(tiny_pipe, video=video, num_frames=13)
    pixels = tiny_pipe.video_processor.preprocess_video(video, height=32, width=32)
    quantized = tiny_pipe.video_tokenizer.quantize(tiny_pipe.video_tokenizer.encode(pixels).latents).features
    torch.testing.assert_close(latents[:, :, :2], quantized)
    assert latents.shape[2] == 4


def test_guidance_schedules():
    falling = falling_guidance(5, 6)
    assert falling[0, 0] == 5 and falling[-1, -1] == 3 and (falling.flatten().diff() < 0).all()
    rising = rising_guidance(5, 6)
    assert rising[:, 0].tolist() == [1, 2, 3, 4, 5] and (rising[:, -1] == 10).all()
    assert (rising.diff(dim=1) >= 0).all()
    assert guidance_table(2.5, 2, 3).tolist() == [[2.5] * 3] * 2
    torch.testing.assert_close(guidance_table("text-to-video", 5, 6), falling)


def test_save_and_load_give_the_same_outputs(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    reloaded = VideoARPipeline.from_pretrained(tmp_path / "pipe")
    reloaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(generate(reloaded, output_type="np"), generate(tiny_pipe, output_type="np"))
    for name in ("video_tokenizer", "transformer", "text_encoder"):
        original, loaded = getattr(tiny_pipe, name).state_dict(), getattr(reloaded, name).state_dict()
        assert original.keys() == loaded.keys()
        assert all(torch.equal(original[k], loaded[k]) for k in original)
    assert not list((tmp_path / "pipe").rglob("*.bin")) and not list((tmp_path / "pipe").rglob("*.pt"))


def test_model_index_json_is_pinned(tiny_pipe, tmp_path):
    # a saved format: moving a class breaks every checkpoint on the Hub
    tiny_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "VideoARPipeline"]  # the `DiffusionPipeline` shim
    assert index["video_tokenizer"] == ["videoar_hf.modeling_tokenizer", "VideoARTokenizer"]
    assert index["transformer"] == ["videoar_hf.modeling_videoar", "VideoARTransformer"]
    assert index["text_encoder"] == ["transformers", "BertModel"]
    assert index["tokenizer"] == ["transformers", "BertTokenizer"]
    assert set(index) - {"_class_name", "_diffusers_version"} == {  # no `_name_or_path`
        "video_tokenizer",
        "transformer",
        "text_encoder",
        "tokenizer",
    }


def test_load_from_a_hub_repo_id_offline(tiny_pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo_id = offline_hub_repo(tmp_path, "org/videoar-tiny", tiny_pipe.save_pretrained)
    reloaded = VideoARPipeline.from_pretrained(repo_id, cache_dir=tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(generate(reloaded, output_type="np"), generate(tiny_pipe, output_type="np"))
    # and each component on its own, by repo id and subfolder
    for name, cls in (("video_tokenizer", VideoARTokenizer), ("transformer", VideoARTransformer)):
        component = cls.from_pretrained(repo_id, subfolder=name, cache_dir=tmp_path)
        original = getattr(tiny_pipe, name).state_dict()
        assert all(torch.equal(v, original[k]) for k, v in component.state_dict().items())


def test_missing_hub_repo_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="org/absent"):
        VideoARPipeline.from_pretrained("org/absent", cache_dir=tmp_path)


@pytest.mark.parametrize("dtype_kwarg", ["dtype", "torch_dtype"])
def test_dtype_puts_every_component_in_one_dtype(tiny_pipe, tmp_path, dtype_kwarg):
    tiny_pipe.to(dtype=torch.bfloat16).save_pretrained(tmp_path)  # a bf16 checkpoint
    default = VideoARPipeline.from_pretrained(tmp_path)
    assert {m.dtype for m in (default.video_tokenizer, default.transformer, default.text_encoder)} == {torch.float32}
    bf16 = VideoARPipeline.from_pretrained(tmp_path, **{dtype_kwarg: torch.bfloat16})
    assert {m.dtype for m in (bf16.video_tokenizer, bf16.transformer, bf16.text_encoder)} == {torch.bfloat16}
    bf16.set_progress_bar_config(disable=True)
    assert np.isfinite(generate(bf16, num_frames=5, output_type="np")).all()


def test_save_is_atomic(tiny_pipe, tmp_path, monkeypatch):
    target = tmp_path / "pipe"
    umask = os.umask(0)
    os.umask(umask)
    tiny_pipe.save_pretrained(target)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask, "the folder gets the user's usual permissions, not 0700"
    before = sorted(p.relative_to(target) for p in target.rglob("*"))

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(tiny_pipe.transformer), "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        tiny_pipe.save_pretrained(target)
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"], "no temporary folder may be left behind"
    VideoARPipeline.from_pretrained(target)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_frames=8), r"num_frames.*1 \+ 4.*got 8"),
        (dict(num_frames=0), "num_frames"),
        (dict(height=30), "height.*multiple of 8.*30"),
        (dict(width=36), "width.*multiple of 8.*36"),
        (dict(height=48, width=48), "48x48.*scale_schedule"),
        (dict(top_k=-1), "top_k.*-1"),
        (dict(top_p=0.0), r"top_p.*\(0, 1\]"),
        (dict(top_p=1.5), "top_p.*1.5"),
        (dict(temperature=0.0), "temperature.*> 0"),
        (dict(guidance_scale=[1.0, 2.0]), r"guidance_scale.*\(5, 3\)"),
        (dict(guidance_scale="loud"), "guidance_scale.*text-to-video"),
        (dict(output_type="gif"), "output_type.*gif"),
        (dict(num_videos_per_prompt=0), "num_videos_per_prompt"),
        (dict(generator=[torch.Generator()] * 3), "generator.*3"),
        (dict(negative_prompt=["a", "b"]), "negative_prompt.*2"),
    ],
)
def test_bad_call_arguments_are_named(tiny_pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_pipe(PROMPT, **kwargs)


def test_empty_prompt_list(tiny_pipe):
    with pytest.raises(ValueError, match="prompt.*empty"):
        tiny_pipe([])


def test_other_temporal_compressions_validate_their_own_frame_counts():
    pipe = tiny_pipeline(temporal_compression_ratio=2)
    assert generate(pipe, num_frames=5).shape[2] == 3
    with pytest.raises(ValueError, match=r"num_frames.*1 \+ 2"):
        pipe(PROMPT, num_frames=4)
    assert generate(tiny_pipeline(temporal_compression_ratio=1), num_frames=2).shape[2] == 2


def test_spatial_compression_4_generates_saves_and_continues(tmp_path):
    pipe = tiny_pipeline(spatial_compression_ratio=4, sample_size=16)
    video = generate(pipe, height=16, width=16, num_frames=5, output_type="np")
    assert video.shape == (1, 5, 16, 16, 3)
    pipe.save_pretrained(tmp_path / "f4")
    reloaded = VideoARPipeline.from_pretrained(tmp_path / "f4")
    reloaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(generate(reloaded, height=16, width=16, num_frames=5, output_type="np"), video)
    first = PIL.Image.fromarray((video[0, 0] * 255).round().astype(np.uint8))
    assert generate(pipe, image=first, height=16, width=16, num_frames=5, output_type="np").shape == video.shape
    with pytest.raises(ValueError, match="height"):
        pipe(PROMPT, height=18, width=16, num_frames=5)


def test_conditioning_must_leave_frames_to_generate(tiny_pipe):
    image = PIL.Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match="num_frames"):
        tiny_pipe(PROMPT, image=image, num_frames=1)
    with pytest.raises(ValueError, match="image.*video"):
        tiny_pipe(PROMPT, image=image, video=[image] * 5)


def test_long_prompts_are_truncated_with_a_warning(tiny_pipe, caplog):
    long_prompt = "a red circle moving left " * 10  # far over the tiny encoder's 64 tokens
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            frames = generate(tiny_pipe, long_prompt, num_frames=1)
    finally:
        diffusers_logging.disable_propagation()
    assert "truncated" in caplog.text and frames.shape[2] == 1


@pytest.mark.parametrize(
    "component, field, value, match",
    [
        ("video_tokenizer", "latent_channels", 6, "latent bits"),
        ("video_tokenizer", "scale_schedule", (1, 4), "scale schedule"),
        ("text_encoder", "hidden_size", 48, "text hidden size"),
    ],
)
def test_components_whose_configs_disagree(tiny_pipe, component, field, value, match):
    from transformers import BertConfig, BertModel

    from videoar_hf import VideoARTokenizer

    parts = dict(tiny_pipe.components)
    if component == "video_tokenizer":
        config = dict(tiny_pipe.video_tokenizer.config)
        config[field] = value
        parts[component] = VideoARTokenizer.from_config(config)
    else:
        parts[component] = BertModel(BertConfig(**{**tiny_pipe.text_encoder.config.to_dict(), field: value,
                                                   "num_attention_heads": 2}))  # fmt: skip
    with pytest.raises(ValueError, match=f"disagree on the {match}"):
        VideoARPipeline(**parts)


def test_missing_or_corrupt_weight_files_are_named(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    missing = tmp_path / "missing"
    shutil.copytree(tmp_path / "pipe", missing)
    (missing / "transformer" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"Missing weights for `transformer`"):
        VideoARPipeline.from_pretrained(missing)

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tmp_path / "pipe", corrupt)
    weights = next((corrupt / "video_tokenizer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"Corrupt weight file .*{weights.name}"):
        VideoARPipeline.from_pretrained(corrupt)

    with pytest.raises(ValueError, match="model_index.json"):
        VideoARPipeline.from_pretrained(tmp_path / "pipe" / "transformer")


def test_a_frame_window_bounds_the_kv_cache_without_changing_the_video(tiny_pipe, monkeypatch):
    from videoar_hf.cache import VideoARCache

    tiny_pipe.transformer.config.frame_mask_window = 1
    sizes = []
    original_update = VideoARCache.update

    def recording_update(self, layer_idx, key, value):
        keys, values = original_update(self, layer_idx, key, value)
        sizes.append(keys.shape[2])
        return keys, values

    monkeypatch.setattr(VideoARCache, "update", recording_update)
    windowed = generate(tiny_pipe, num_frames=33, output_type="np")
    frames_of_tokens = 1 + 4 + 16  # the tiny schedule (1, 2, 4): tokens per latent frame
    assert max(sizes) <= sizes[0] + 2 * frames_of_tokens  # text + start block, then at most two frames' tokens

    monkeypatch.setattr(VideoARCache, "drop_frames_before", lambda self, frame: None)
    sizes.clear()
    unbounded = generate(tiny_pipe, num_frames=33, output_type="np")
    assert max(sizes) > sizes[0] + 7 * frames_of_tokens
    np.testing.assert_array_equal(windowed, unbounded)


def test_decode_chunk_size_gives_the_same_frames(tiny_pipe):
    np.testing.assert_allclose(
        generate(tiny_pipe, output_type="np", decode_chunk_size=1), generate(tiny_pipe, output_type="np"), atol=1e-6
    )
    with pytest.raises(ValueError, match="chunk_size"):
        generate(tiny_pipe, decode_chunk_size=0, output_type="np")
