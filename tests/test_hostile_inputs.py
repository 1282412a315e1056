"""The threat model in one place: what a stranger's adapter, folder or argument may try, and what it gets.

Every case must be answered cleanly: a clear error of the expected type that names the parameter or file, no
change to the pipeline (the same seed gives bit-identical output after the failed call), and no hang.
"""

import dataclasses
import os
from pathlib import Path
import json

import numpy as np
import pytest
import torch
from peft import LoraConfig

from videoar_hf.testing_utils import tiny_lora_adapter

PROMPT = "a red circle moving left"


def frames(pipe, seed=0, **kwargs):
    kwargs.setdefault("num_frames", 5)
    kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
    return pipe(PROMPT, **kwargs).frames


def weights(pipe):
    return {k: v.clone() for k, v in pipe.transformer.state_dict().items()}


def assert_same_weights(pipe, before):
    after = pipe.transformer.state_dict()
    assert list(after) == list(before), "the transformer's modules changed"
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed"


# ------------------------------------------------------------------ 1. adapters never change the base model


def _non_default(field: dataclasses.Field, default):
    """A value other than peft's default for `field`, of a plausible type."""
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 3
    if isinstance(default, float):
        return default + 0.5
    if isinstance(default, dict):
        return {"layers.0.self_attn.q_proj": 2}
    if isinstance(default, str):
        return "lora_only" if field.name == "bias" else "something-else"
    return {
        "modules_to_save": ["bit_head"], "layer_replication": [[0, 2], [0, 2]], "target_parameters": ["start_token"],
        "trainable_token_indices": [0, 1], "layers_to_transform": [0], "layers_pattern": "layers",
        "exclude_modules": ["o_proj"], "target_modules": ["q_proj"],
    }.get(field.name, {"x": 1})  # fmt: skip


def lora_fields():
    defaults = LoraConfig()
    for field in dataclasses.fields(LoraConfig):
        if field.name in ("peft_type", "runtime_config"):
            continue  # the type is checked on its own; the runtime config is not saved
        yield field.name, _non_default(field, getattr(defaults, field.name))


def adapter_with(tmp_path, tiny_pipe, **config_fields):
    folder = tiny_lora_adapter(tiny_pipe.transformer, tmp_path / "adapter", seed=3)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **config_fields}))
    return folder


@pytest.mark.parametrize("field, value", list(lora_fields()), ids=[name for name, _ in lora_fields()])
def test_every_adapter_field_leaves_the_base_bit_identical(tiny_pipe, tmp_path, field, value):
    before, video = weights(tiny_pipe), frames(tiny_pipe)
    folder = adapter_with(tmp_path, tiny_pipe, **{field: value})
    try:
        tiny_pipe.load_lora_weights(folder, adapter_name="hostile")
    except ValueError as error:
        assert field in str(error) or str(folder) in str(error), error
    else:
        tiny_pipe.unload_lora_weights()
    assert_same_weights(tiny_pipe, before)
    np.testing.assert_array_equal(frames(tiny_pipe), video)


@pytest.mark.parametrize(
    "field, value",
    [("init_lora_weights", "pissa"), ("init_lora_weights", "olora"), ("init_lora_weights", "loftq"),
     ("modules_to_save", ["bit_head"]), ("layer_replication", [[0, 2], [0, 2]]), ("bias", "all"), ("use_dora", True)],
)  # fmt: skip
def test_base_rewriting_adapters_are_refused_by_name(tiny_pipe, tmp_path, field, value):
    before = weights(tiny_pipe)
    with pytest.raises(ValueError, match=f"`{field}`"):
        tiny_pipe.load_lora_weights(adapter_with(tmp_path, tiny_pipe, **{field: value}))
    assert_same_weights(tiny_pipe, before)
    assert tiny_pipe.get_list_adapters() == {}


# ------------------------------------------------------------------ 2. adapters cannot hang loading


@pytest.mark.timeout(60)
@pytest.mark.parametrize("field", ["target_modules", "exclude_modules", "layers_pattern", "rank_pattern"])
def test_catastrophic_regexes_are_refused_at_once(tiny_pipe, tmp_path, field):
    evil = "([a-z0-9_.]|[a-z0-9_.])*Z"
    value = {evil: 2} if field == "rank_pattern" else evil
    before = weights(tiny_pipe)
    with pytest.raises(ValueError, match=f"`{field}"):
        tiny_pipe.load_lora_weights(adapter_with(tmp_path, tiny_pipe, **{field: value}))
    assert_same_weights(tiny_pipe, before)


def test_plain_name_patterns_still_load(tiny_pipe, tmp_path):
    names = [f"layers.{i}.{m}" for i in range(2) for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj")]
    folder = adapter_with(tmp_path, tiny_pipe, target_modules="|".join(names))  # peft: a full match of one name
    tiny_pipe.load_lora_weights(folder, adapter_name="x")
    assert tiny_pipe.get_list_adapters() == {"transformer": ["x"]}


# ------------------------------------------------------------------ 3, 4. folders: safetensors only, nothing missing


@pytest.fixture
def saved(tiny_pipe, tmp_path, monkeypatch):
    """A saved tiny pipeline, and a guard that fails the test if anything reaches an unpickler."""
    import pickle

    def unpickler(*args, **kwargs):
        raise AssertionError("an unpickler was reached")

    tiny_pipe.save_pretrained(tmp_path / "pipe")
    monkeypatch.setattr(torch, "load", unpickler)
    monkeypatch.setattr(pickle, "load", unpickler)
    monkeypatch.setattr(pickle, "Unpickler", unpickler)
    return tmp_path / "pipe"


def load(folder, **kwargs):
    from videoar_hf import VideoARPipeline

    return VideoARPipeline.from_pretrained(folder, **kwargs)


def edit_index(folder, **changes):
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, **changes}))


@pytest.mark.parametrize("slot", ["transformer", "video_tokenizer", "text_encoder", "tokenizer"])
def test_a_pickle_in_any_slot_is_refused_by_name(saved, slot):
    (saved / slot / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ValueError, match=rf"`{slot}` holds .*pytorch_model.bin, a pickle-format file"):
        load(saved)


@pytest.mark.parametrize("slot, weights", [("transformer", "model.safetensors"), ("text_encoder", "model.safetensors"),
                                           ("video_tokenizer", "diffusion_pytorch_model.safetensors")])  # fmt: skip
def test_a_decoy_weight_name_with_a_pickle_is_refused(saved, slot, weights):
    (saved / slot / weights).rename(saved / slot / "decoy.txt")
    (saved / slot / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ValueError, match="pickle-format"):
        load(saved)
    (saved / slot / "pytorch_model.bin").unlink()
    with pytest.raises(ValueError, match=rf"Missing weights for `{slot}`"):
        load(saved)


@pytest.mark.parametrize(
    "slot, spec, match",
    [("tokenizer", ["transformers", "BertModel"], "must hold a PreTrainedTokenizerBase"),
     ("text_encoder", ["transformers", "BertTokenizer"], "must hold a PreTrainedModel"),
     ("transformer", ["os", "system"], "names the library 'os'"),
     ("video_tokenizer", ["videoar_hf.modeling_tokenizer", "NoSuchClass"], "does not exist"),
     ("transformer", "VideoARTransformer", r"must be \[library, class name\]")],
)  # fmt: skip
def test_a_slot_must_name_a_class_of_its_kind(saved, slot, spec, match):
    edit_index(saved, **{slot: spec})
    with pytest.raises(ValueError, match=match):
        load(saved)


@pytest.mark.parametrize("index", ["[1, 2]", "{}", "not json", '{"scheduler": ["diffusers", "DDIMScheduler"]}'])
def test_a_broken_model_index_is_named(saved, index):
    (saved / "model_index.json").write_text(index)
    with pytest.raises(ValueError, match="model_index.json"):
        load(saved)


def test_a_missing_tokenizer_folder_is_an_error_not_a_five_token_vocabulary(saved):
    import shutil

    shutil.rmtree(saved / "tokenizer")
    with pytest.raises(ValueError, match="`tokenizer` is missing"):
        load(saved)


def test_missing_or_unexpected_weights_name_the_component_and_keys(saved):
    from safetensors.torch import load_file, save_file

    path = saved / "transformer" / "model.safetensors"
    tensors = load_file(path)
    kept = dict(list(tensors.items())[: len(tensors) // 2])
    save_file(kept, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"`transformer` is missing weights .*: \S+, .* and \d+ more"):
        load(saved)
    save_file({**tensors, "layers.9.extra.weight": torch.zeros(1)}, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"`transformer` has unexpected weights .*layers.9.extra.weight"):
        load(saved)


@pytest.mark.parametrize("field, value", [("num_hidden_layers", -1), ("num_hidden_layers", 0), ("hidden_size", 0),
                                          ("num_attention_heads", -2), ("latent_bits", 0), ("rope_theta", -1.0)])  # fmt: skip
def test_configs_are_validated_on_load(saved, field, value):
    config = json.loads((saved / "transformer" / "config.json").read_text())
    (saved / "transformer" / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(Exception, match=field):
        load(saved)


# ------------------------------------------------------------------ 5. a replace is atomic for readers


def test_readers_never_find_the_folder_missing_while_it_is_replaced(tiny_pipe, tmp_path):
    import threading

    target = tmp_path / "pipe"
    tiny_pipe.save_pretrained(target)
    misses, looks, done = [0], [0], threading.Event()

    def read():
        while not done.is_set():
            looks[0] += 1
            if not (target / "model_index.json").is_file():
                misses[0] += 1

    reader = threading.Thread(target=read)
    reader.start()
    for _ in range(15):
        tiny_pipe.save_pretrained(target)
    done.set()
    reader.join()
    assert looks[0] > 100 and misses[0] == 0, f"absent {misses[0]} times in {looks[0]} looks"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_a_save_removes_what_an_interrupted_save_left(tiny_pipe, tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    for leftover in (f".pipe.tmp-{pid}-abc123", f".pipe.old-{pid}-0123abcd", f".other.tmp-{pid}-abc"):
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / "big.safetensors").write_bytes(b"0" * 1000)
    live = tmp_path / f".pipe.tmp-{os.getpid()}-inprogress"  # a save in progress in a live process stays
    live.mkdir()
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".other.tmp-{pid}-abc", live.name, "pipe"]


# ------------------------------------------------------------------ 6, 7. every argument checked, sizes bounded


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kwargs, match", [
    (dict(num_frames=4_000_001), r"`num_frames` = 4000001 .* needs about .* GiB, but .* free: at most \d+ frames fit"),
    (dict(num_videos_per_prompt=10**7), r"at most \d+ video\(s\)"),
])  # fmt: skip
def test_sizes_beyond_the_machine_are_refused_with_the_maximum(tiny_pipe, kwargs, match):
    video = frames(tiny_pipe)
    with pytest.raises(ValueError, match=match):
        frames(tiny_pipe, **kwargs)
    np.testing.assert_array_equal(frames(tiny_pipe), video)


BAD_ARGUMENTS = [
    ("num_frames", "17"), ("num_frames", 17.0), ("num_frames", None), ("num_frames", True), ("num_frames", 0),
    ("height", "32"), ("height", 0), ("height", 32.5), ("width", {}), ("width", -32),
    ("guidance_scale", {"a": 1}), ("guidance_scale", float("nan")),
    ("top_p", "0.9"), ("top_p", 0), ("top_p", float("nan")), ("top_k", 1.5), ("temperature", "1"),
    ("history_guidance_start", -1),
    ("temperature", float("inf")), ("temperature", 0), ("max_sequence_length", 0), ("max_sequence_length", "77"),
    ("generator", 0), ("generator", [0]), ("generator", []), ("callback_on_step_end", "print"),
    ("callback_on_step_end_tensor_inputs", "latents"), ("decode_chunk_size", 0), ("return_dict", "yes"),
    ("num_videos_per_prompt", 2.0), ("negative_prompt", 3), ("negative_prompt", []),
    ("image", "missing.png"), ("image", []), ("video", []), ("image", 3),
    ("image", np.full((32, 32, 3), np.nan, dtype=np.float32)), ("image", np.full((32, 32, 3), 7.0, dtype=np.float32)),
    ("video", torch.full((5, 3, 32, 32), float("inf"))), ("image", np.zeros((32, 32, 3), dtype=np.int64)),
]  # fmt: skip


@pytest.mark.parametrize("name, value", BAD_ARGUMENTS, ids=[f"{n}={v!r}"[:40] for n, v in BAD_ARGUMENTS])
def test_a_wrong_argument_is_named_before_any_work(tiny_pipe, name, value, monkeypatch):
    video = frames(tiny_pipe)
    encoded = []
    monkeypatch.setattr(tiny_pipe, "_encode_texts", lambda *a, **k: encoded.append(1))
    with pytest.raises(ValueError, match=f"`{name}`"):
        frames(tiny_pipe, **{name: value})
    assert not encoded, "the text was encoded before the arguments were checked"
    monkeypatch.undo()
    np.testing.assert_array_equal(frames(tiny_pipe), video)


def test_a_wrong_prompt_is_named(tiny_pipe):
    for prompt in (None, 3, [], [1, 2], "x" * 200_001):
        with pytest.raises(ValueError, match="`prompt`"):
            tiny_pipe(prompt, num_frames=5)


# ------------------------------------------------------------------ 8. frames in the forms users have them


def test_image_modes_and_dtypes_give_the_same_conditioning(tiny_pipe):
    import PIL.Image

    rgb = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    forms = {
        "pil": PIL.Image.fromarray(rgb), "uint8 array": rgb, "float array": rgb.astype(np.float32) / 255,
        "uint8 tensor": torch.from_numpy(rgb).permute(2, 0, 1), "rgba": PIL.Image.fromarray(rgb).convert("RGBA"),
    }  # fmt: skip
    latents = {name: frames(tiny_pipe, image=form, output_type="latent")[:, :, 0] for name, form in forms.items()}
    for name, value in latents.items():
        torch.testing.assert_close(value, latents["pil"], msg=f"{name} differs from the PIL image")
    grey = frames(tiny_pipe, image=PIL.Image.fromarray(rgb).convert("L"), output_type="latent")
    palette = frames(tiny_pipe, image=PIL.Image.fromarray(rgb).convert("P"), output_type="latent")
    assert grey.shape == palette.shape == frames(tiny_pipe, output_type="latent").shape


@pytest.fixture(scope="module")
def shipped():
    from videoar_hf import VideoARPipeline, shipped_model_path

    pipe = VideoARPipeline.from_pretrained(shipped_model_path())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("form", ["uint8 array", "uint8 tensor", "float array"])
def test_uint8_and_float_frames_come_back_close_to_the_input(shipped, form):
    from videoar_hf.shapes import render_clip

    clip = render_clip("red", "circle", "left", size=16, speed=1.0, start=(40.0, 32.0), num_frames=5).video  # uint8
    given = {"uint8 array": list(clip), "uint8 tensor": torch.from_numpy(clip).permute(0, 3, 1, 2),
             "float array": clip.astype(np.float32) / 255}[form]  # fmt: skip
    out = shipped("a red circle moving left", video=given, num_frames=9, generator=torch.Generator().manual_seed(0)).frames
    mse = float(((out[0, :5] - clip.astype(np.float32) / 255) ** 2).mean())
    assert 10 * np.log10(1 / mse) > 25, f"the conditioning frames came back at {10 * np.log10(1 / mse):.1f} dB"


# ------------------------------------------------------------------ 8, 9, 10. the CLI: one line, exit 2, nothing left


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    from videoar_hf.testing_utils import tiny_pipeline

    path = tmp_path_factory.mktemp("cli") / "tiny"
    tiny_pipeline().save_pretrained(path)
    return path


def run_cli(capsys, *args) -> tuple[int, list[str]]:
    from videoar_hf.cli import main

    code = main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("videoar")]


def broken_copy(cli_model, tmp_path, edit):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(cli_model, folder)
    edit(folder)
    return folder


def _write(path, text):
    path.write_text(text)


@pytest.mark.parametrize("edit, match", [
    (lambda f: _write(f / "model_index.json", "[1, 2]"), "model_index.json"),
    (lambda f: _write(f / "model_index.json", "{}"), "`video_tokenizer`"),
    (lambda f: _write(f / "transformer" / "config.json", json.dumps(
        {**json.loads((f / "transformer" / "config.json").read_text()), "num_hidden_layers": "four"})), "num_hidden_layers"),
    (lambda f: (f / "transformer" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage"), "transformer"),
])  # fmt: skip
def test_a_broken_model_folder_is_one_line(cli_model, tmp_path, capsys, edit, match):
    folder = broken_copy(cli_model, tmp_path, edit)
    code, lines = run_cli(capsys, "generate", "x", "-o", str(tmp_path / "o.mp4"), "--model", str(folder))
    assert code == 2 and len(lines) == 1 and match in lines[0], lines


def test_wrong_shaped_weights_are_one_line(cli_model, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    def shrink(folder):
        path = folder / "transformer" / "model.safetensors"
        tensors = load_file(path)
        tensors["bit_head.weight"] = torch.zeros(3, 3)
        save_file(tensors, path, metadata={"format": "pt"})

    code, lines = run_cli(capsys, "generate", "x", "-o", str(tmp_path / "o.mp4"), "--model",
                          str(broken_copy(cli_model, tmp_path, shrink)))  # fmt: skip
    assert code == 2 and len(lines) == 1 and "--model" in lines[0], lines


@pytest.mark.parametrize("args, match", [
    (["-o", "{tmp}/folder.mp4"], "is a folder"),
    (["-o", "/proc/clip.mp4"], "cannot write there"),
    (["--width", "0"], "--width: must be a positive integer"),
    (["--seed", "99999999999999999999999"], "--seed: must be in 0 .. 2**64 - 1"),
    (["--num-frames", "abc"], "--num-frames"),
    (["--model", "org/nonexistent"], "not in the local cache (offline"),
])  # fmt: skip
def test_cli_bad_generate_arguments_are_one_line(cli_model, tmp_path, capsys, args, match):
    (tmp_path / "folder.mp4").mkdir()
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--model" not in args:
        args += ["--model", str(cli_model)]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "o.mp4")]
    code, lines = run_cli(capsys, "generate", "a red circle", *args)
    assert code == 2 and len(lines) == 1 and match in lines[0], lines


@pytest.mark.parametrize("args, match", [(["-o", "{file}"], "is a file"), (["--resolution", "0"], "--resolution")])
def test_cli_bad_eval_arguments_are_one_line(cli_model, tmp_path, capsys, args, match):
    (tmp_path / "file").write_text("")
    args = [a.replace("{file}", str(tmp_path / "file")) for a in args]
    code, lines = run_cli(capsys, "eval", "--model", str(cli_model), *args)
    assert code == 2 and len(lines) == 1 and match in lines[0], lines


def test_a_non_video_is_one_short_line(cli_model, tmp_path, capsys):
    fake = tmp_path / "notvideo.mp4"
    fake.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 1000)
    code, lines = run_cli(capsys, "generate", "x", "-o", str(tmp_path / "o.mp4"), "--model", str(cli_model),
                          "--video", str(fake))  # fmt: skip
    assert code == 2 and len(lines) == 1 and "cannot be read as a video" in lines[0] and len(lines[0]) <= 600


@pytest.mark.timeout(60)
def test_a_hanging_adapter_is_one_line_from_the_cli(cli_model, tmp_path, capsys):
    from videoar_hf.testing_utils import tiny_pipeline

    folder = tiny_lora_adapter(tiny_pipeline().transformer, tmp_path / "evil", seed=1)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "target_modules": "([a-z0-9_.]|[a-z0-9_.])*Z"}))
    code, lines = run_cli(capsys, "generate", "x", "-o", str(tmp_path / "o.mp4"), "--model", str(cli_model),
                          "--lora", str(folder))  # fmt: skip
    assert code == 2 and len(lines) == 1 and "target_modules" in lines[0]


def test_ctrl_c_is_one_line_exit_130_and_no_file(cli_model, tmp_path, capsys, monkeypatch):
    from videoar_hf import VideoARPipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(VideoARPipeline, "__call__", interrupted)
    out = tmp_path / "o.mp4"
    code, lines = run_cli(capsys, "generate", "x", "-o", str(out), "--model", str(cli_model))
    assert code == 130 and lines == ["videoar: interrupted"]
    assert list(tmp_path.iterdir()) == []


def test_video_continuation_reads_the_needed_frames_at_the_fps_cropped_as_in_training(tmp_path, capsys):
    """A 25 fps 640x272 clip: 13 frames at 8 fps are the context, centre-cropped (not squashed) to 64x64."""
    import av
    import imageio.v3 as iio

    from videoar_hf.media import frames_to_clip, read_video_frames

    source = np.zeros((60, 272, 640, 3), np.uint8)
    for t in range(60):  # a red square drifting right, at 25 fps, over black as in Shapes
        source[t, 100:172, 200 + 4 * t : 272 + 4 * t] = (220, 30, 30)
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 272, "yuv420p"
        for frame in source:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    out = tmp_path / "out.mp4"
    code, lines = run_cli(capsys, "generate", "a red square moving right", "-o", str(out), "--video", str(path),
                          "--num-frames", "17", "--fps", "8")  # fmt: skip
    assert code == 0, lines
    got = iio.imread(out).astype(np.float32) / 255
    assert got.shape[0] == 17
    cropped = ((frames_to_clip(read_video_frames(path, 13, fps=8), (64, 64)) + 1) / 2).permute(1, 2, 3, 0).numpy()
    squashed = np.stack([np.asarray(__import__("PIL.Image").Image.fromarray(f).resize((64, 64)))
                         for f in read_video_frames(path, 13, fps=8)]).astype(np.float32) / 255  # fmt: skip

    def psnr(a, b):
        return 10 * np.log10(1 / float(((a - b) ** 2).mean()))

    assert psnr(got[:13], cropped) > 22, psnr(got[:13], cropped)
    assert psnr(got[:13], cropped) > psnr(got[:13], squashed) + 3


# ------------------------------------------------------------------ 11. a damaged checkpoint stops the resume


@pytest.mark.parametrize("damaged", ["random_states_0.pkl", "training_state.json", "model.safetensors"])
def test_a_damaged_checkpoint_part_stops_the_resume_by_name(tmp_path, damaged, caplog):
    from accelerate import Accelerator

    from videoar_hf.training import CheckpointManager, LossHistory

    def run():
        accelerator = Accelerator(cpu=True)
        model = torch.nn.Linear(4, 4)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        return accelerator.prepare(model, optimizer), CheckpointManager(accelerator, tmp_path)

    (model, optimizer), checkpoints = run()
    path = checkpoints.save(1, LossHistory())
    (path / damaged).write_bytes((path / damaged).read_bytes()[:20])  # truncated, as by a full disk or a kill
    (model, optimizer), checkpoints = run()
    with pytest.raises(ValueError, match=f"{damaged} is unreadable"):
        checkpoints.load(path)
    if damaged == "random_states_0.pkl":  # the one part a run may knowingly go on without
        with caplog.at_level("WARNING"):
            assert checkpoints.load(path, allow_inexact=True)[0] == 1
        assert "--allow_inexact_resume" in caplog.text


# ------------------------------------------------------------------ 10. a missing dataset is named at once


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dataset", ["data/my_clips", "./missing", "/no/such/folder", "org/name"])
def test_a_missing_dataset_is_one_line_at_once(tmp_path, monkeypatch, capsys, dataset):
    import sys
    import time

    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    try:
        import train_lora
    finally:
        sys.path.pop(0)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()  # `data/my_clips` then reads as a local path, even though it looks like org/name
    monkeypatch.setattr(sys, "argv", ["train_lora.py", "--dataset", dataset, "--output_dir", str(tmp_path / "out"),
                                      "--max_train_steps", "1"])  # fmt: skip
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        from videoar_hf.training import run_script

        run_script("train_lora", train_lora.main, train_lora.parse_args)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train_lora")]
    assert exit_info.value.code == 2 and len(lines) == 1 and dataset in lines[0], lines
    assert time.perf_counter() - start < 20, "the Hub was retried"


# ------------------------------------------------------------------ 12. the demo


@pytest.fixture(scope="module")
def demo_client():
    import socket

    pytest.importorskip("gradio")
    from gradio_client import Client

    from videoar_hf.app import DemoLimits, build_demo
    from videoar_hf.testing_utils import tiny_pipeline

    demo = build_demo(tiny_pipeline(), DemoLimits(max_frames=9, max_resolution=64, kept_videos=3))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield demo, Client(f"http://127.0.0.1:{port}/", verbose=False)
    demo.close()


def test_the_demo_offers_only_what_the_pipeline_serves(demo_client):
    demo, _ = demo_client
    dropdown = next(c for c in demo.blocks.values() if getattr(c, "label", None) == "Resolution (px)")
    assert [value for _, value in dropdown.choices] == [8, 16, 32]  # 64 is within the limit but not in the schedule
    slider = next(c for c in demo.blocks.values() if getattr(c, "label", None) == "Frames")
    assert (slider.minimum, slider.maximum, slider.step) == (1, 9, 4)


def test_the_api_needs_only_the_prompt(demo_client):
    _, client = demo_client
    parameters = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]["parameters"]
    required = [p["parameter_name"] for p in parameters if not p["parameter_has_default"]]
    assert "negative_prompt" not in required and "image" not in required, required
    _, video, _ = client.predict(prompt="a red circle moving left", num_frames=5, resolution=32, api_name="/generate")
    assert video


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_frames="abc"), "frames: 'abc' is not a number"), (dict(seed="x", randomize_seed=False), "seed"),
    (dict(guidance_scale=[1]), "guidance scale"), (dict(image={"path": "/etc/hostname"}), "image: upload an image"),
    (dict(negative_prompt=3), "negative prompt"),
])  # fmt: skip
def test_wrong_api_inputs_are_named(demo_client, kwargs, match):
    from gradio_client.exceptions import AppError

    _, client = demo_client
    with pytest.raises(AppError, match=match):
        client.predict(**{"prompt": "a red circle", "resolution": 32, "num_frames": 5, **kwargs}, api_name="/generate")


def test_a_non_image_upload_is_named(demo_client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    _, client = demo_client
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"not a png at all")
    with pytest.raises(AppError, match="image: the upload is not an image"):
        client.predict(prompt="a red circle", resolution=32, num_frames=5, image=handle_file(str(fake)), api_name="/generate")


def test_the_demo_keeps_a_bounded_number_of_videos(demo_client):
    _, client = demo_client
    paths = [client.predict(prompt="a red circle", num_frames=1, resolution=8, api_name="/generate")[1] for _ in range(5)]
    assert all(paths)
    import glob
    import tempfile

    kept = [f for d in glob.glob(f"{tempfile.gettempdir()}/videoar-demo-*") for f in glob.glob(f"{d}/*.mp4")]
    assert len(kept) <= 3 * len(glob.glob(f"{tempfile.gettempdir()}/videoar-demo-*"))


def test_a_rejected_request_logs_one_line_and_no_traceback(demo_client, capfd, caplog):
    from gradio_client.exceptions import AppError

    _, client = demo_client
    capfd.readouterr()
    with caplog.at_level("WARNING", logger="videoar_hf.app"), pytest.raises(AppError):
        client.predict(prompt="a red circle", num_frames=7, resolution=32, api_name="/generate")
    assert "Traceback" not in capfd.readouterr().err
    assert [r.getMessage() for r in caplog.records if r.name == "videoar_hf.app"] == [
        "rejected a request: frames: 7 is not allowed; use 1 + 4k frames, at most 9."
    ]


@pytest.mark.parametrize("component", ["transformer", "video_tokenizer"])
def test_the_models_alone_load_safetensors_only(saved, component):
    from videoar_hf import VideoARTokenizer, VideoARTransformer

    cls = {"transformer": VideoARTransformer, "video_tokenizer": VideoARTokenizer}[component]
    for weights in (saved / component).glob("*.safetensors"):
        weights.unlink()
    (saved / component / ("pytorch_model.bin" if component == "transformer" else "diffusion_pytorch_model.bin")).write_bytes(b"\x80\x04x")
    with pytest.raises((OSError, EnvironmentError, ValueError)):
        cls.from_pretrained(saved / component)
    with pytest.raises(ValueError, match="use_safetensors"):
        cls.from_pretrained(saved / component, use_safetensors=False)


@pytest.mark.parametrize("args", [["--num-frames", "8"], ["--width", "0"], ["--model", "/no/such/folder"]])
def test_the_installed_command_prints_exactly_one_line(cli_model, tmp_path, args):
    """As a user runs it: a fresh process, whose imports (torchao's CUDA notices, loading bars) add nothing."""
    import subprocess
    import sys

    if "--model" not in args:
        args = args + ["--model", str(cli_model)]
    result = subprocess.run([sys.executable, "-m", "videoar_hf.cli", "generate", "x", "-o", str(tmp_path / "o.mp4"),
                             *args], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("videoar: error:"), result.stderr


def test_a_checkpoint_save_removes_partials_of_killed_saves(tmp_path):
    from accelerate import Accelerator

    from videoar_hf.training import CheckpointManager, LossHistory

    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(2, 2))
    for step in (3, 7):
        (tmp_path / f".checkpoint-{step}.partial").mkdir(parents=True)
    CheckpointManager(accelerator, tmp_path).save(1, LossHistory())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]
