"""What a diffusers user reaches for: hooks, offloading, low-memory modes, generic loading, callbacks, embeddings."""

import json

import numpy as np
import pytest
import torch
from accelerate import cpu_offload
from diffusers import DiffusionPipeline
from diffusers.callbacks import PipelineCallback

from videoar_hf import VideoARPipeline
from videoar_hf.testing_utils import offline_hub_repo, tiny_pipeline

PROMPT = "a red circle moving left"
NUM_FRAMES, LATENT_FRAMES, SCALES = 9, 3, 3  # the tiny pipeline: temporal compression 4, scales (1, 2, 4)


def frames(pipe, seed=0, **kwargs):
    kwargs.setdefault("prompt", PROMPT)
    return pipe(num_frames=NUM_FRAMES, generator=torch.Generator().manual_seed(seed), **kwargs).frames


@pytest.fixture(scope="module")
def reference():
    return frames(tiny_pipeline())


# ------------------------------------------------------------------ hooks and offloading


def test_a_forward_hook_on_the_transformer_sees_every_sampling_pass(tiny_pipe):
    calls = []
    tiny_pipe.transformer.register_forward_hook(lambda module, args, kwargs, output: calls.append(kwargs["cache"]),
                                                with_kwargs=True)  # fmt: skip
    frames(tiny_pipe)
    assert len(calls) == LATENT_FRAMES * SCALES
    assert tiny_pipe.num_timesteps == LATENT_FRAMES * SCALES


def test_torch_compile_of_the_transformer_module_sees_sampling(reference):
    pipe = tiny_pipeline()
    counts = []
    backend = lambda graph, example_inputs: counts.append(1) or graph.forward  # noqa: E731  dynamo hands over graphs
    pipe.transformer.compile(backend=backend, dynamic=True)
    np.testing.assert_array_equal(frames(pipe), reference)
    assert counts, "dynamo traced no graph of the sampling passes"


def test_model_cpu_offload_gives_identical_frames(reference):
    pipe = tiny_pipeline()
    pipe.enable_model_cpu_offload(device="cpu")
    np.testing.assert_array_equal(frames(pipe), reference)


def test_sequential_offload_hooks_give_identical_frames(reference):
    # exactly what `enable_sequential_cpu_offload` installs; diffusers names the device "cpu:0" there, which
    # accelerate's hooks reject on a CPU-only machine for any module (upstream), so the device is given as "cpu"
    pipe = tiny_pipeline()
    for component in (pipe.text_encoder, pipe.transformer, pipe.video_tokenizer):
        cpu_offload(component, torch.device("cpu"), offload_buffers=len(component._parameters) > 0)
    assert pipe.transformer.layers[0].mlp.up_proj.weight.device.type == "meta"  # really offloaded
    assert pipe.video_tokenizer.decoder.conv_in.conv.weight.device.type == "meta"
    np.testing.assert_array_equal(frames(pipe), reference)


@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
def test_group_offload_gives_identical_frames(reference, offload_type):
    pipe = tiny_pipeline()
    pipe.enable_group_offload(torch.device("cpu"), offload_device=torch.device("cpu"), offload_type=offload_type,
                              num_blocks_per_group=1)  # fmt: skip
    np.testing.assert_array_equal(frames(pipe), reference)


@pytest.mark.parametrize("storage_dtype, tolerance", [(torch.bfloat16, 0.05), (torch.float8_e4m3fn, 0.5)])
def test_layerwise_casting_on_the_transformer_and_the_tokenizer(reference, storage_dtype, tolerance):
    pipe = tiny_pipeline()
    pipe.transformer.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=torch.float32)
    pipe.video_tokenizer.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=torch.float32)
    assert pipe.transformer.layers[0].self_attn.q_proj.weight.dtype == storage_dtype
    assert pipe.transformer.norm.weight.dtype == torch.float32  # norms keep their precision
    assert pipe.video_tokenizer.decoder.conv_in.conv.weight.dtype == storage_dtype
    video = frames(pipe)
    assert video.shape == reference.shape and np.isfinite(video).all()
    assert np.abs(video - reference).mean() < tolerance


# ------------------------------------------------------------------ loading


def test_diffusion_pipeline_loads_it_from_a_folder(tiny_pipe, reference, tmp_path):
    tiny_pipe.save_pretrained(tmp_path)
    shim = (tmp_path / "pipeline.py").read_text()
    assert [line for line in shim.splitlines() if not line.startswith("#")] == ["from videoar_hf import VideoARPipeline  # noqa: F401"]
    pipe = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(pipe) is VideoARPipeline
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(frames(pipe), reference)


def test_diffusion_pipeline_loads_it_from_an_offline_hub_cache(tiny_pipe, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo_id = offline_hub_repo(tmp_path, "org/videoar-tiny", tiny_pipe.save_pretrained)
    pipe = DiffusionPipeline.from_pretrained(repo_id, cache_dir=tmp_path, trust_remote_code=True)
    assert type(pipe) is VideoARPipeline
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(frames(pipe), reference)


def test_videoar_pipeline_never_runs_the_shim(tiny_pipe, reference, tmp_path):
    tiny_pipe.save_pretrained(tmp_path)
    (tmp_path / "pipeline.py").write_text("raise RuntimeError('the shim ran')\n")
    pipe = VideoARPipeline.from_pretrained(tmp_path)  # no trust_remote_code, no code from the folder
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(frames(pipe), reference)
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(tmp_path)  # diffusers asks before running anything


def test_older_folders_without_the_shim_still_load(tiny_pipe, reference, tmp_path):
    tiny_pipe.save_pretrained(tmp_path)
    (tmp_path / "pipeline.py").unlink()
    index = json.loads((tmp_path / "model_index.json").read_text())
    (tmp_path / "model_index.json").write_text(json.dumps({**index, "_class_name": "VideoARPipeline"}))
    pipe = VideoARPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(frames(pipe), reference)


def test_saved_configs_do_not_leak_where_the_pipeline_came_from(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "first")
    VideoARPipeline.from_pretrained(tmp_path / "first").save_pretrained(tmp_path / "second")
    for path in (tmp_path / "second").rglob("*.json"):
        assert "_name_or_path" not in json.loads(path.read_text()), path


def test_dtype_per_component(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path)
    pipe = VideoARPipeline.from_pretrained(tmp_path, dtype={"transformer": torch.bfloat16, "default": torch.float32})
    assert pipe.transformer.dtype == torch.bfloat16
    assert pipe.video_tokenizer.dtype == pipe.text_encoder.dtype == torch.float32
    pipe.set_progress_bar_config(disable=True)
    assert np.isfinite(frames(pipe)).all()
    with pytest.raises(ValueError, match="dtype"):
        VideoARPipeline.from_pretrained(tmp_path, dtype={"unet": torch.float16})


# ------------------------------------------------------------------ callbacks


def test_a_callback_that_turns_guidance_off_mid_video(tiny_pipe, reference):
    seen = []

    def guidance_off_after_frame_1(pipe, step, frame_and_scale, callback_kwargs):
        seen.append((step, frame_and_scale, pipe.guidance_scale))
        if step == SCALES - 1:
            pipe._guidance_scale = 1.0
        return callback_kwargs

    video = frames(tiny_pipe, guidance_scale=4.0, callback_on_step_end=guidance_off_after_frame_1)
    assert [s[0] for s in seen] == list(range(LATENT_FRAMES * SCALES))
    assert seen[1][1] == (0, 1) and seen[SCALES][2] == 1.0
    with_guidance = frames(tiny_pipe, guidance_scale=4.0)
    # the first frame is as with guidance throughout; the rest differs
    first = slice(0, 1)
    np.testing.assert_array_equal(video[:, first], with_guidance[:, first])
    assert not np.array_equal(video, with_guidance)


def test_a_callback_can_interrupt(tiny_pipe):
    def stop_after_first_frame(pipe, step, frame_and_scale, callback_kwargs):
        if step == SCALES - 1:
            pipe._interrupt = True
        return callback_kwargs

    latents = frames(tiny_pipe, output_type="latent", callback_on_step_end=stop_after_first_frame,
                     callback_on_step_end_tensor_inputs=["latents"])  # fmt: skip
    assert tiny_pipe.interrupt
    assert latents[:, :, 0].abs().sum() > 0 and latents[:, :, 1:].abs().sum() == 0
    assert frames(tiny_pipe, output_type="latent")[:, :, 1:].abs().sum() > 0  # the next call starts afresh


def test_a_pipeline_callback_subclass(tiny_pipe):
    class ZeroLatentsFrom(PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            if step_index >= self.config.cutoff_step_index:
                callback_kwargs["latents"] = torch.zeros_like(callback_kwargs["latents"])
            return callback_kwargs

    latents = frames(tiny_pipe, output_type="latent", callback_on_step_end=ZeroLatentsFrom(cutoff_step_ratio=None, cutoff_step_index=SCALES))
    assert latents.abs().sum() == 0  # zeroed from the second frame's first pass on, the first frame included


# ------------------------------------------------------------------ precomputed text embeddings


def test_prompt_embeds_give_the_same_video_as_prompts(tiny_pipe, reference):
    prompt_embeds, prompt_mask, negative_embeds, negative_mask = tiny_pipe.encode_prompt(PROMPT)
    video = frames(tiny_pipe, prompt=None, prompt_embeds=prompt_embeds, prompt_attention_mask=prompt_mask,
                   negative_prompt_embeds=negative_embeds, negative_prompt_attention_mask=negative_mask)  # fmt: skip
    np.testing.assert_array_equal(video, reference)


def test_encode_prompt_needs_only_the_text_components(tiny_pipe, reference):
    text_only = VideoARPipeline(video_tokenizer=None, transformer=None, text_encoder=tiny_pipe.text_encoder,
                                tokenizer=tiny_pipe.tokenizer)  # fmt: skip
    embeds = text_only.encode_prompt(PROMPT)
    no_text = VideoARPipeline(video_tokenizer=tiny_pipe.video_tokenizer, transformer=tiny_pipe.transformer,
                              text_encoder=None, tokenizer=None)  # fmt: skip
    no_text.set_progress_bar_config(disable=True)
    names = ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask")
    np.testing.assert_array_equal(frames(no_text, prompt=None, **dict(zip(names, embeds))), reference)
    with pytest.raises(ValueError, match="prompt_embeds"):
        frames(no_text)  # a prompt string needs the text encoder


def test_bad_embeddings_are_named(tiny_pipe):
    embeds, mask, _, _ = tiny_pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)
    with pytest.raises(ValueError, match="exactly one of `prompt` and `prompt_embeds`"):
        frames(tiny_pipe, prompt_embeds=embeds)
    with pytest.raises(ValueError, match="prompt_attention_mask"):
        frames(tiny_pipe, prompt=None, prompt_embeds=embeds, prompt_attention_mask=mask[:, :-1])
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        frames(tiny_pipe, prompt=None, prompt_embeds=embeds, negative_prompt_embeds=embeds[0])


# ------------------------------------------------------------------ quantized and placed loading


def test_int8_weight_only_loading_through_the_libraries_quantization_configs(tiny_pipe, reference, tmp_path):
    pytest.importorskip("torchao")
    from diffusers import PipelineQuantizationConfig
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    tiny_pipe.save_pretrained(tmp_path)
    int8 = TorchAoConfig(Int8WeightOnlyConfig())
    config = PipelineQuantizationConfig(quant_mapping={"transformer": int8, "text_encoder": int8})
    pipe = VideoARPipeline.from_pretrained(tmp_path, quantization_config=config)
    for linear in (pipe.transformer.layers[0].self_attn.q_proj, pipe.text_encoder.encoder.layer[0].intermediate.dense):
        assert linear.weight.qdata.dtype == torch.int8
    def linear_weight_bytes(model):
        weights = [m.weight for m in model.layers.modules() if isinstance(m, torch.nn.Linear)]
        return sum(sum(t.numel() * t.element_size() for t in ((w.qdata, w.scale) if hasattr(w, "qdata") else (w,)))
                   for w in weights)  # fmt: skip

    assert linear_weight_bytes(pipe.transformer) * 2 < linear_weight_bytes(tiny_pipe.transformer)
    pipe.set_progress_bar_config(disable=True)
    video = frames(pipe)
    assert video.shape == reference.shape and np.abs(video - reference).mean() < 0.1


def test_device_map_auto_loads_each_model(tiny_pipe, tmp_path):
    from videoar_hf import VideoARTokenizer, VideoARTransformer

    tiny_pipe.save_pretrained(tmp_path)
    tokenizer = VideoARTokenizer.from_pretrained(tmp_path, subfolder="video_tokenizer", device_map="auto")
    transformer = VideoARTransformer.from_pretrained(tmp_path / "transformer", device_map="auto")
    for loaded, original in ((tokenizer, tiny_pipe.video_tokenizer), (transformer, tiny_pipe.transformer)):
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), original.state_dict().values()))


def test_variants_save_and_load_in_safetensors(tiny_pipe, reference, tmp_path):
    tiny_pipe.save_pretrained(tmp_path, variant="fp16")
    assert sorted(p.name for p in tmp_path.glob("*/*.safetensors")) == [
        "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors", "model.fp16.safetensors"
    ]  # fmt: skip
    pipe = VideoARPipeline.from_pretrained(tmp_path, variant="fp16")
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(frames(pipe), reference)
    with pytest.raises(ValueError, match="variant"):
        VideoARPipeline.from_pretrained(tmp_path, variant="bf16")
    from videoar_hf import VideoARTokenizer

    VideoARTokenizer.from_pretrained(tmp_path / "video_tokenizer", variant="fp16")
    with pytest.raises(OSError, match="diffusion_pytorch_model.safetensors"):  # never a fallback to a pickle
        VideoARTokenizer.from_pretrained(tmp_path / "video_tokenizer")


def test_tokenizer_outputs_are_tensors_in_both_forms(tiny_pipe):
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    as_dict = tiny_pipe.video_tokenizer(video)
    as_tuple = tiny_pipe.video_tokenizer(video, return_dict=False)
    assert len(as_tuple) == len(as_dict) and all(torch.is_tensor(x) for x in as_tuple)
    for a, b in zip(as_tuple, as_dict.values()):
        torch.testing.assert_close(a, b)
