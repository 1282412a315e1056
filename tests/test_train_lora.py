"""`examples/train_lora.py` on CPU with a tiny pipeline: a LoRA that loads, changes only what it should, resumes."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from videoar_hf import VideoARPipeline
from videoar_hf.testing_utils import tiny_pipeline
from videoar_hf.training.shapes_options import shapes_options_from_args
from videoar_hf.training.text_to_video import TextToVideoTrainer

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("train_lora", ROOT / "examples" / "train_lora.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base") / "tiny"
    tiny_pipeline().save_pretrained(folder)
    return folder


def lora_args(base_model, output_dir, *extra):
    return [
        "--pretrained_model", str(base_model), "--output_dir", str(output_dir), "--dataset", "shapes",
        "--shapes_new_colours", "orange=255,128,0", "--shapes_colours", "orange", "--num_clips", "16",
        "--resolution", "32", "--num_frames", "5", "--train_batch_size", "4", "--learning_rate", "1e-2",
        "--rank", "4", "--report_to", "none", "--validation_prompts", "--logging_steps", "1", "--precompute",
        *extra,
    ]  # fmt: skip


def test_lora_trains_saves_a_peft_adapter_and_loads_into_the_pipeline(base_model, tmp_path):
    script = load_script()
    adapter = script.main(script.parse_args(lora_args(base_model, tmp_path, "--max_train_steps", "12",
                                                      "--checkpointing_steps", "6", "--target_modules", "q_proj", "v_proj")))  # fmt: skip
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all(k.startswith("base_model.model.layers.") and ".lora_" in k for k in weights)
    assert {k.split(".")[-3] for k in weights} == {"q_proj", "v_proj"}
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["peft_type"]) == (4, "LORA")
    card = (adapter / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: text-to-video" in card and "| rank / alpha | 4 / 4 |" in card
    losses = [r["loss"] for r in json.loads((tmp_path / "history.json").read_text())]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])

    pipe, base = VideoARPipeline.from_pretrained(base_model), VideoARPipeline.from_pretrained(base_model)
    pipe.load_lora_weights(adapter, adapter_name="orange")
    generator = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    tuned = pipe("an orange circle moving left", num_frames=5, generator=generator(), output_type="latent").frames
    plain = base("an orange circle moving left", num_frames=5, generator=generator(), output_type="latent").frames
    assert not torch.equal(tuned, plain)
    pipe.unload_lora_weights()
    again = pipe("an orange circle moving left", num_frames=5, generator=generator(), output_type="latent").frames
    assert torch.equal(again, plain), "the base weights were not touched by training"


def test_resume_from_a_checkpoint_gives_the_same_adapter(base_model, tmp_path, monkeypatch):
    script = load_script()
    common = ["--max_train_steps", "6", "--checkpointing_steps", "3"]
    full = script.main(script.parse_args(lora_args(base_model, tmp_path / "full", *common)))
    shutil.copytree(tmp_path / "full" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    steps, original = [], TextToVideoTrainer.training_step
    monkeypatch.setattr(TextToVideoTrainer, "training_step", lambda *a: steps.append(1) or original(*a))
    resumed = script.main(script.parse_args(lora_args(base_model, tmp_path / "resumed", *common,
                                                      "--resume_from_checkpoint", "latest")))  # fmt: skip
    assert len(steps) == 3, "the resumed run trains only the steps after its checkpoint"
    a, b = load_file(full / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_new_colour_share_sets_how_many_clips_are_in_the_new_colours(base_model, tmp_path):
    script = load_script()
    args = script.parse_args(lora_args(base_model, tmp_path, "--shapes_new_colour_share", "0.25", "--shapes_colours",
                                       "orange", "red", "blue", "--num_clips", "40"))  # fmt: skip
    colours = [item["colour"] for item in shapes_options_from_args(args).dataset(5, 32, seed=0)]
    assert colours.count("orange") == 10 and set(colours) == {"orange", "red", "blue"}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rank", "0"], "--rank must be >= 1"),
        (["--target_modules", "to_q"], "--target_modules ['to_q'] are not projections"),
        (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
        (["--shapes_new_colours", "orange=300,0,0"], "--shapes_new_colours: a colour is NAME=R,G,B"),
        (["--shapes_colours", "purple"], "--shapes_colours ['purple'] are not in the palette"),
        (["--shapes_new_colour_share", "1"], "--shapes_new_colour_share must be in (0, 1)"),
        (["--shapes_new_colour_share", "0.5"], "needs both new and original colours"),
        (["--shapes_mid_path_share", "0.5"], "--shapes_mid_path_share must be in [0, 1] and needs --shapes_bounce"),
        (["--shapes_bounce", "--shapes_mid_path_share", "-1"], "--shapes_mid_path_share must be in [0, 1]"),
        (["--shapes_bounce", "--shapes_after_turn_share", "0.5"], "--shapes_after_turn_share must be in [0, 1] and needs --shapes_mid_path_share"),
    ],
)
def test_bad_flags_stop_with_one_line(base_model, tmp_path, capsys, extra, message):
    script = load_script()
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(lora_args(base_model, tmp_path, *extra))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_base_model_is_named(tmp_path):
    script = load_script()
    args = script.parse_args(lora_args(tmp_path / "absent", tmp_path / "out"))
    with pytest.raises(SystemExit, match="--pretrained_model .*absent"):
        script.main(args)
