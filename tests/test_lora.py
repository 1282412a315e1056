"""LoRA on `VideoARPipeline`: load, combine, fuse, save and unload adapters; bad adapters leave the pipeline alone."""

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from videoar_hf import VideoARConfig, VideoARPipeline, VideoARTransformer
from videoar_hf.testing_utils import offline_hub_repo, tiny_lora_adapter, tiny_pipeline

PROMPT = "a red circle moving left"


def video(pipe, seed=0):
    return pipe(PROMPT, num_frames=5, generator=torch.Generator().manual_seed(seed), output_type="np").frames


@torch.no_grad()
def logits(pipe_or_transformer):
    """Teacher-forced logits on fixed random inputs: a continuous view of the transformer, unlike sampled bits."""
    transformer = getattr(pipe_or_transformer, "transformer", pipe_or_transformer)
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, 2, s, s, 8, generator=generator) for s in (1, 2, 4)]
    text = torch.randn(1, 6, transformer.config.text_hidden_size, generator=generator)
    return transformer.eval()(inputs, text).logits


def snapshot(pipe):
    return {k: v.clone() for k, v in pipe.transformer.state_dict().items()}, pipe.get_list_adapters(), pipe.get_active_adapters()


def assert_unchanged(pipe, before):
    weights, adapters, active = snapshot(pipe)
    assert list(weights) == list(before[0])
    assert all(torch.equal(weights[k], before[0][k]) for k in weights)
    assert (adapters, active) == before[1:]


@pytest.fixture
def adapters(tiny_pipe, tmp_path):
    return (
        tiny_lora_adapter(tiny_pipe.transformer, tmp_path / "a", seed=1),
        tiny_lora_adapter(tiny_pipe.transformer, tmp_path / "b", seed=2, target_modules=("k_proj", "down_proj")),
    )


def test_load_generate_unload_is_bit_identical_to_the_base(tiny_pipe, adapters):
    base_video, base = video(tiny_pipe), snapshot(tiny_pipe)
    tiny_pipe.load_lora_weights(adapters[0], adapter_name="a")
    assert tiny_pipe.get_active_adapters() == ["a"]
    assert not torch.equal(logits(tiny_pipe), logits(tiny_pipeline()))
    video(tiny_pipe)
    tiny_pipe.unload_lora_weights()
    assert_unchanged(tiny_pipe, (base[0], {}, []))
    np.testing.assert_array_equal(video(tiny_pipe), base_video)


def test_the_adapter_is_what_peft_computes(tiny_pipe, adapters):
    expected = PeftModel.from_pretrained(tiny_pipeline().transformer, str(adapters[0]))
    tiny_pipe.load_lora_weights(adapters[0])
    torch.testing.assert_close(logits(tiny_pipe), logits(expected))


def test_fuse_matches_unfused_and_unfuse_restores(tiny_pipe, adapters):
    base_weights = snapshot(tiny_pipe)[0]
    tiny_pipe.load_lora_weights(adapters[0], adapter_name="a")
    tiny_pipe.load_lora_weights(adapters[1], adapter_name="b")
    tiny_pipe.set_adapters(["a", "b"], [0.7, 1.3])
    unfused = logits(tiny_pipe)
    tiny_pipe.fuse_lora(lora_scale=0.5)
    half = logits(tiny_pipe)
    tiny_pipe.unfuse_lora()
    torch.testing.assert_close(logits(tiny_pipe), unfused)
    tiny_pipe.fuse_lora()
    torch.testing.assert_close(logits(tiny_pipe), unfused, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(half, unfused)
    tiny_pipe.unfuse_lora()
    tiny_pipe.unload_lora_weights()
    restored = snapshot(tiny_pipe)[0]
    assert all(torch.allclose(restored[k], base_weights[k], atol=1e-6) for k in base_weights)


def test_fused_save_reloads_the_same_weights_with_clean_keys(tiny_pipe, adapters, tmp_path):
    tiny_pipe.load_lora_weights(adapters[0])
    tiny_pipe.fuse_lora()
    fused = logits(tiny_pipe)
    tiny_pipe.save_pretrained(tmp_path / "fused")
    keys = load_file(tmp_path / "fused" / "transformer" / "model.safetensors").keys()
    assert not [k for k in keys if "lora" in k or "base_layer" in k or k.startswith("base_model")]
    reloaded = VideoARPipeline.from_pretrained(tmp_path / "fused")
    assert reloaded.get_list_adapters() == {}
    torch.testing.assert_close(logits(reloaded), fused)
    # the fused weights are the pipeline's weights once the adapter is unloaded
    tiny_pipe.unload_lora_weights()
    saved, kept = reloaded.transformer.state_dict(), tiny_pipe.transformer.state_dict()
    assert list(saved) == list(kept) and all(torch.equal(saved[k], kept[k]) for k in saved)


def test_saving_the_pipeline_with_an_unfused_adapter_is_refused(tiny_pipe, adapters, tmp_path):
    tiny_pipe.load_lora_weights(adapters[0])
    with pytest.raises(ValueError, match="unfused LoRA.*save_lora_adapter"):
        tiny_pipe.save_pretrained(tmp_path / "pipe")
    assert not (tmp_path / "pipe").exists()


def test_set_adapters_with_weights_one_and_zero_equals_the_first_alone(tiny_pipe, adapters):
    tiny_pipe.load_lora_weights(adapters[0], adapter_name="a")
    alone = logits(tiny_pipe)
    tiny_pipe.load_lora_weights(adapters[1], adapter_name="b")
    assert tiny_pipe.get_active_adapters() == ["b"]
    tiny_pipe.set_adapters(["a", "b"], [1.0, 0.0])
    assert tiny_pipe.get_active_adapters() == ["a", "b"]
    torch.testing.assert_close(logits(tiny_pipe), alone)
    tiny_pipe.set_adapters(["a", "b"], [1.0, 1.0])
    assert not torch.allclose(logits(tiny_pipe), alone)
    tiny_pipe.delete_adapters("b")
    assert tiny_pipe.get_list_adapters() == {"transformer": ["a"]} and tiny_pipe.get_active_adapters() == ["a"]
    torch.testing.assert_close(logits(tiny_pipe), alone)


def test_save_lora_adapter_round_trips_in_the_peft_format(tiny_pipe, adapters, tmp_path):
    tiny_pipe.load_lora_weights(adapters[0], adapter_name="a")
    expected = logits(tiny_pipe)
    tiny_pipe.save_lora_adapter(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert all(k.startswith("base_model.model.") for k in load_file(tmp_path / "saved" / "adapter_model.safetensors"))
    fresh = tiny_pipeline()
    fresh.load_lora_weights(tmp_path / "saved")
    torch.testing.assert_close(logits(fresh), expected)


def test_load_from_a_hub_repo_id_offline(tiny_pipe, adapters, tmp_path):
    repo_id = offline_hub_repo(tmp_path / "cache", "org/tiny-lora", lambda folder: tiny_lora_adapter(
        tiny_pipe.transformer, folder, seed=1))  # fmt: skip
    tiny_pipe.load_lora_weights(repo_id, adapter_name="hub", cache_dir=tmp_path / "cache")
    from_hub = logits(tiny_pipe)
    tiny_pipe.unload_lora_weights()
    tiny_pipe.load_lora_weights(adapters[0])
    torch.testing.assert_close(from_hub, logits(tiny_pipe))


def wrong_shapes(tmp_path):
    wider = VideoARTransformer(VideoARConfig.from_preset("tiny", latent_bits=8, hidden_size=128))  # same names
    return tiny_lora_adapter(wider, tmp_path / "wrong_shapes")


def retargeted(*target_modules):
    def make(tmp_path):
        folder = tiny_lora_adapter(tiny_pipeline().transformer, tmp_path / "retargeted")
        config = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**config, "target_modules": list(target_modules)}))
        return folder

    return make


def renamed_module(tmp_path):
    folder = tiny_lora_adapter(tiny_pipeline().transformer, tmp_path / "renamed")
    weights = load_file(folder / "adapter_model.safetensors")
    save_file({k.replace("q_proj", "query"): v for k, v in weights.items()}, folder / "adapter_model.safetensors")
    return folder


def no_files(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


@pytest.mark.parametrize(
    "make, match",
    [
        (wrong_shapes, r"shapes A \(4, 128\), B \(512, 4\) do not fit module 'layers.0.mlp.up_proj' \(64 -> 256\)"),
        (retargeted("to_qkv"), r"target_modules \['to_qkv'\] match no module"),
        (retargeted("q_proj", "v_proj", "up_proj", "norm"), "module 'norm' is not a linear layer"),
        (renamed_module, "weights for 'layers.0.self_attn.query', a module the transformer does not have"),
        (no_files, r"not a LoRA adapter folder: it lacks \['adapter_config.json', 'adapter_model.safetensors'\]"),
        (lambda tmp_path: tmp_path / "missing", "neither a file, a folder nor a Hub repo id"),
    ],
)
def test_bad_adapters_are_named_and_leave_the_pipeline_unchanged(tiny_pipe, adapters, tmp_path, make, match):
    tiny_pipe.load_lora_weights(adapters[0], adapter_name="a")
    before, expected = snapshot(tiny_pipe), logits(tiny_pipe)
    with pytest.raises(ValueError, match=match):
        tiny_pipe.load_lora_weights(make(tmp_path), adapter_name="bad")
    assert_unchanged(tiny_pipe, before)
    torch.testing.assert_close(logits(tiny_pipe), expected)


def test_bad_adapter_on_a_bare_pipeline_leaves_plain_modules(tiny_pipe, tmp_path):
    before = snapshot(tiny_pipe)
    with pytest.raises(ValueError, match="do not fit"):
        tiny_pipe.load_lora_weights(wrong_shapes(tmp_path))
    assert_unchanged(tiny_pipe, before)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: p.set_adapters(["a", "nope"]), r"Adapter name\(s\) \['nope'\] not in the list of present adapters: \['a', 'b'\]"),
        (lambda p: p.set_adapters(["a", "b"], [1.0]), "`adapter_weights` needs one finite number per adapter"),
        (lambda p: p.delete_adapters("nope"), r"Unknown adapter\(s\) \['nope'\]"),
        (lambda p: p.load_lora_weights(p._test_folder, adapter_name="a"), "'a' is already loaded"),
        (lambda p: p.fuse_lora(lora_scale=float("nan")), "`lora_scale` must be a finite number"),
        (lambda p: p.save_lora_adapter(p._test_folder / "x", adapter_name="nope"), "Unknown adapter 'nope'"),
    ],
)
def test_bad_adapter_calls_are_named_and_change_nothing(tiny_pipe, adapters, call, match):
    tiny_pipe.load_lora_weights(adapters[0], adapter_name="a")
    tiny_pipe.load_lora_weights(adapters[1], adapter_name="b")
    tiny_pipe._test_folder = adapters[0]
    before = snapshot(tiny_pipe)
    with pytest.raises(ValueError, match=match):
        call(tiny_pipe)
    assert_unchanged(tiny_pipe, before)


def test_changing_adapters_while_fused_is_refused(tiny_pipe, adapters):
    tiny_pipe.load_lora_weights(adapters[0], adapter_name="a")
    tiny_pipe.fuse_lora()
    for call in (lambda: tiny_pipe.set_adapters("a"), lambda: tiny_pipe.load_lora_weights(adapters[1]), tiny_pipe.fuse_lora):
        with pytest.raises(ValueError, match="while a LoRA is fused: call `unfuse_lora\\(\\)`"):
            call()


# ------------------------------------------------------------------ diffusers' LoRA conventions (LoraBaseMixin)


def peft_state_dict(pipe, name="a"):
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(pipe.transformer, adapter_name=name)


@pytest.mark.parametrize("lora_alpha", [4, 8])
def test_diffusers_single_file_round_trips_with_its_config(tiny_pipe, tmp_path, lora_alpha):
    from peft import LoraConfig

    config = LoraConfig(r=4, lora_alpha=lora_alpha, target_modules=["q_proj", "up_proj"], init_lora_weights=False)
    tiny_pipe.transformer.add_adapter(config, adapter_name="a")  # transformers' own PEFT integration
    expected = logits(tiny_pipe)
    VideoARPipeline.save_lora_weights(tmp_path, transformer_lora_layers=peft_state_dict(tiny_pipe),
                                      transformer_lora_adapter_metadata=config.to_dict())  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pytorch_lora_weights.safetensors"]
    _, metadata = VideoARPipeline.lora_state_dict(tmp_path, return_lora_metadata=True)
    assert metadata["transformer.lora_alpha"] == lora_alpha and metadata["transformer.r"] == 4
    tiny_pipe.unload_lora_weights()
    for source in (tmp_path, tmp_path / "pytorch_lora_weights.safetensors"):
        tiny_pipe.load_lora_weights(source, adapter_name="b")
        torch.testing.assert_close(logits(tiny_pipe), expected)
        tiny_pipe.unload_lora_weights()
    # a bare state dict carries no config: alpha defaults to the rank, as in diffusers
    tiny_pipe.load_lora_weights(load_file(tmp_path / "pytorch_lora_weights.safetensors"), adapter_name="c")
    assert tiny_pipe.transformer.peft_config["c"].lora_alpha == 4
    assert torch.allclose(logits(tiny_pipe), expected) == (lora_alpha == 4)


def test_a_single_file_without_its_config_infers_the_rank(tiny_pipe, adapters, tmp_path):
    tiny_pipe.load_lora_weights(adapters[0], adapter_name="a")
    expected = logits(tiny_pipe)  # rank 4, alpha 4: inferring alpha = rank gives the same update
    VideoARPipeline.save_lora_weights(tmp_path, transformer_lora_layers=peft_state_dict(tiny_pipe))
    tiny_pipe.unload_lora_weights()
    tiny_pipe.load_lora_weights(tmp_path)
    torch.testing.assert_close(logits(tiny_pipe), expected)


def test_pickles_are_refused_when_saving(tiny_pipe, adapters, tmp_path):
    tiny_pipe.load_lora_weights(adapters[0], adapter_name="a")
    with pytest.raises(ValueError, match="safetensors only"):
        VideoARPipeline.save_lora_weights(tmp_path / "out", transformer_lora_layers=peft_state_dict(tiny_pipe),
                                          safe_serialization=False)  # fmt: skip
    assert not (tmp_path / "out").exists()
    (tmp_path / "pytorch_lora_weights.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match="safetensors only"):
        tiny_pipe.load_lora_weights(tmp_path / "pytorch_lora_weights.bin")


def test_lora_scale_in_attention_kwargs(tiny_pipe, adapters):
    base = video(tiny_pipe)
    tiny_pipe.load_lora_weights(adapters[0], adapter_name="a")
    full = video(tiny_pipe)

    def scaled(scale):
        return tiny_pipe(PROMPT, num_frames=5, generator=torch.Generator().manual_seed(0),
                         attention_kwargs={"scale": scale}).frames  # fmt: skip

    np.testing.assert_array_equal(scaled(0.0), base)
    half = scaled(0.5)
    assert not np.array_equal(half, full)
    np.testing.assert_array_equal(video(tiny_pipe), full)  # the scales came back exactly
    tiny_pipe.set_adapters("a", 0.5)
    np.testing.assert_array_equal(video(tiny_pipe), half)
    with pytest.raises(ValueError, match="attention_kwargs"):
        scaled(float("inf"))


def test_fusing_at_a_scale_matches_the_scaled_call(tiny_pipe, adapters):
    tiny_pipe.load_lora_weights(adapters[0], adapter_name="a")
    with tiny_pipe._lora_scale(0.7):
        scaled = logits(tiny_pipe)
    tiny_pipe.fuse_lora(components=["transformer"], lora_scale=0.7)
    assert tiny_pipe.num_fused_loras == 1
    torch.testing.assert_close(logits(tiny_pipe), scaled, atol=1e-5, rtol=1e-5)
    tiny_pipe.unfuse_lora(components=["transformer"])
    assert tiny_pipe.num_fused_loras == 0


def test_a_state_dict_without_transformer_keys_changes_nothing(tiny_pipe, caplog):
    before = snapshot(tiny_pipe)
    tiny_pipe.load_lora_weights({"lora_foo": torch.tensor(2.0)})
    assert_unchanged(tiny_pipe, before)


def test_hotswap_replaces_an_adapter_in_place(tiny_pipe, tmp_path):
    first = tiny_lora_adapter(tiny_pipe.transformer, tmp_path / "first", seed=1)
    second = tiny_lora_adapter(tiny_pipe.transformer, tmp_path / "second", seed=2)
    tiny_pipe.load_lora_weights(second, adapter_name="x")
    expected = logits(tiny_pipe)
    tiny_pipe.unload_lora_weights()
    tiny_pipe.load_lora_weights(first, adapter_name="x")
    tiny_pipe.load_lora_weights(second, adapter_name="x", hotswap=True)
    torch.testing.assert_close(logits(tiny_pipe), expected)
    with pytest.raises(ValueError, match="hotswap"):
        tiny_pipe.load_lora_weights(second, adapter_name="nope", hotswap=True)


def test_load_delete_load_and_unload_add_adapter(tiny_pipe, adapters):
    from peft import LoraConfig

    tiny_pipe.load_lora_weights(adapters[0], adapter_name="a")
    expected = logits(tiny_pipe)
    tiny_pipe.delete_adapters("a")
    torch.testing.assert_close(logits(tiny_pipe), logits(tiny_pipeline()))
    tiny_pipe.load_lora_weights(adapters[0], adapter_name="a")
    torch.testing.assert_close(logits(tiny_pipe), expected)
    tiny_pipe.unload_lora_weights()
    tiny_pipe.transformer.add_adapter(LoraConfig(r=2, target_modules=["v_proj"], init_lora_weights=False), adapter_name="n")
    assert tiny_pipe.get_list_adapters() == {"transformer": ["n"]}
    tiny_pipe.delete_adapters("n")  # the last adapter of one added by `add_adapter`
    assert tiny_pipe.get_list_adapters() == {} and not any("lora" in k for k in tiny_pipe.transformer.state_dict())


def test_hotswap_of_another_rank_after_enable_lora_hotswap(tiny_pipe, tmp_path):
    rank_4 = tiny_lora_adapter(tiny_pipe.transformer, tmp_path / "r4", rank=4, seed=1)
    rank_8 = tiny_lora_adapter(tiny_pipe.transformer, tmp_path / "r8", rank=8, seed=2)
    tiny_pipe.load_lora_weights(rank_8, adapter_name="x")
    expected = logits(tiny_pipe)
    tiny_pipe.unload_lora_weights()
    tiny_pipe.enable_lora_hotswap(target_rank=8)
    tiny_pipe.load_lora_weights(rank_4, adapter_name="x")
    tiny_pipe.load_lora_weights(rank_8, adapter_name="x", hotswap=True)
    torch.testing.assert_close(logits(tiny_pipe), expected)
    with pytest.raises(ValueError, match="before loading the first adapter"):
        tiny_pipe.enable_lora_hotswap(target_rank=8)


def test_low_cpu_mem_usage_loading_gives_the_same_adapter(tiny_pipe, adapters):
    tiny_pipe.load_lora_weights(adapters[0], adapter_name="a")
    expected = logits(tiny_pipe)
    tiny_pipe.unload_lora_weights()
    tiny_pipe.load_lora_weights(adapters[0], adapter_name="a", low_cpu_mem_usage=True)
    torch.testing.assert_close(logits(tiny_pipe), expected)
