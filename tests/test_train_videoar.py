"""`examples/train_videoar.py` end to end on CPU with tiny models: loss, curriculum, resume, NaN, bad data (several
processes: `test_multi_process_training.py`)."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from videoar_hf import VideoARPipeline, VideoARTransformer
from videoar_hf.testing_utils import tiny_pipeline
from videoar_hf.training import NonFiniteLossError
from videoar_hf.training.text_to_video import TextToVideoTrainer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_videoar.py"


def load_script():
    spec = importlib.util.spec_from_file_location("train_videoar", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def base_args(components, output_dir, *extra):
    return [
        "--tokenizer", str(components / "tokenizer"), "--text_encoder", str(components / "text_encoder"),
        "--output_dir", str(output_dir), "--dataset", "shapes", "--num_clips", "32",
        "--resolution", "32", "--num_frames", "5", "--train_batch_size", "4", "--learning_rate", "3e-3",
        "--report_to", "none", "--validation_prompts", "a red circle moving left", "--logging_steps", "1",
        *extra,
    ]  # fmt: skip


def test_training_runs_end_to_end_and_the_loss_falls(components, tmp_path):
    script = load_script()
    args = script.parse_args(base_args(components, tmp_path, "--max_train_steps", "30", "--checkpointing_steps",
                                       "15", "--precompute", "--use_ema", "--ema_decay", "0.9"))  # fmt: skip
    pipeline_dir = script.main(args)
    losses = [r["loss"] for r in json.loads((tmp_path / "history.json").read_text())]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5
    assert (tmp_path / "loss_curve.png").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["checkpoint-15", "checkpoint-30"]
    assert (tmp_path / "samples" / "checkpoint-30" / "00.mp4").stat().st_size > 0
    pipe = VideoARPipeline.from_pretrained(pipeline_dir)
    assert pipe("a blue square moving up", num_frames=5, output_type="np").frames.shape == (1, 5, 32, 32, 3)


def test_curriculum_runs_two_stages_at_different_sizes(components, tmp_path, monkeypatch):
    stages = {
        "stages": [
            {"name": "I", "resolution": 16, "num_frames": 5, "steps": 4, "batch_size": 4, "learning_rate": 2e-3,
             "image_ratio": 0.5},
            {"name": "II", "resolution": 32, "num_frames": 9, "steps": 3, "batch_size": 2, "learning_rate": 1e-3},
        ]
    }  # fmt: skip
    (tmp_path / "stages.json").write_text(json.dumps(stages))
    seen = []
    script = load_script()
    original = TextToVideoTrainer.training_step

    def spy(self, batch, *rest):
        seen.append(tuple(batch["video"].shape))
        return original(self, batch, *rest)

    monkeypatch.setattr(TextToVideoTrainer, "training_step", spy)
    args = script.parse_args(base_args(components, tmp_path / "run", "--stages", str(tmp_path / "stages.json"),
                                       "--validation_prompts"))  # fmt: skip
    script.main(args)
    stage_one, stage_two = set(seen[:4]), set(seen[4:])
    # images batched apart, as many as cost what 4 clips of 2 latent frames cost
    assert stage_one <= {(4, 3, 5, 16, 16), (8, 3, 1, 16, 16)} and len(stage_one) == 2, "videos and stills in stage I"
    assert stage_two == {(2, 3, 9, 32, 32)}
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r["step"] for r in history] == list(range(1, 8))
    assert history[4]["lr"] == pytest.approx(1e-3), "stage II starts at its own peak learning rate"


def test_precompute_caches_the_stills_and_the_clips_of_a_stage_apart(components, tmp_path, monkeypatch):
    """A joint image-video stage with --precompute: the stills (1 latent frame) and the clips (2) get a cache each,
    and changing only the learning rate reuses both."""
    stage = {"name": "I", "resolution": 16, "num_frames": 5, "steps": 4, "batch_size": 4, "learning_rate": 2e-3,
             "image_ratio": 0.5}  # fmt: skip
    (tmp_path / "stages.json").write_text(json.dumps({"stages": [stage]}))
    seen = []
    script = load_script()
    original = TextToVideoTrainer.training_step
    monkeypatch.setattr(TextToVideoTrainer, "training_step",
                        lambda self, batch, *rest: seen.append(tuple(batch["latents"].shape[::2][:2])) or original(self, batch, *rest))  # fmt: skip
    args = base_args(components, tmp_path / "run", "--stages", str(tmp_path / "stages.json"), "--precompute",
                     "--validation_prompts")  # fmt: skip
    script.main(script.parse_args(args))
    assert set(seen) == {(4, 2), (8, 1)}, "(batch, latent frames): clips and stills each from their own cache"
    caches = sorted(p.name for p in (tmp_path / "run" / "latent_cache").iterdir())
    assert len(caches) == 2
    (tmp_path / "stages.json").write_text(json.dumps({"stages": [{**stage, "learning_rate": 1e-3}]}))
    script.main(script.parse_args(args))
    assert sorted(p.name for p in (tmp_path / "run" / "latent_cache").iterdir()) == caches


def run_script(args, env=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env)


def test_kill_and_resume_reaches_the_same_weights_and_loss_curve(components, tmp_path):
    # error correction and the random frame mask stay on: their randomness must be restored too
    common = ["--max_train_steps", "8", "--checkpointing_steps", "2", "--checkpoints_total_limit", "2",
              "--use_ema", "--ema_decay", "0.9", "--validation_prompts"]  # fmt: skip
    reference = run_script(base_args(components, tmp_path / "reference", *common))
    assert reference.wait(timeout=300) == 0

    killed = run_script(base_args(components, tmp_path / "killed", *common))
    deadline = time.time() + 240
    while not (tmp_path / "killed" / "checkpoint-4").exists():
        assert killed.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "pipeline").exists()

    resumed = run_script(base_args(components, tmp_path / "killed", *common, "--resume_from_checkpoint", "latest"))
    assert resumed.wait(timeout=300) == 0

    def outcome(run):
        history = json.loads((tmp_path / run / "history.json").read_text())
        return load_file(tmp_path / run / "pipeline" / "transformer" / "model.safetensors"), history

    (weights, history), (weights_resumed, history_resumed) = outcome("reference"), outcome("killed")
    assert history_resumed == history
    assert weights.keys() == weights_resumed.keys()
    assert all(torch.equal(weights[k], weights_resumed[k]) for k in weights)


def test_a_nan_loss_stops_the_run_naming_the_step(components, tmp_path, monkeypatch):
    script = load_script()
    original = TextToVideoTrainer.training_step
    calls = []

    def poisoned(*args):
        calls.append(1)
        loss, logs = original(*args)
        return (loss * float("nan") if len(calls) == 4 else loss), logs

    monkeypatch.setattr(TextToVideoTrainer, "training_step", poisoned)
    args = script.parse_args(base_args(components, tmp_path, "--max_train_steps", "6", "--validation_prompts"))
    with pytest.raises(NonFiniteLossError, match="nan at step 4") as error:
        script.main(args)
    assert "checkpoint-3" in str(error.value)
    state = json.loads((tmp_path / "checkpoint-3" / "training_state.json").read_text())
    assert state["step"] == 3 and len(state["history"]) == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--text_dropout", "1.5"], "--text_dropout"),
        (["--mixed_precision", "fp16"], "fp16"),
        (["--checkpointing_steps", "0"], "--checkpointing_steps"),
        (["--transformer_config", "{oops"], "--transformer_config"),
        (["--stages", "/no/such/stages.yaml"], "stages.yaml"),
    ],
)
def test_bad_flags_stop_with_one_line(components, tmp_path, capsys, extra, message):
    if extra[:2] == ["--mixed_precision", "fp16"] and torch.cuda.is_available():
        pytest.skip("fp16 is allowed on a GPU")
    with pytest.raises(SystemExit) as exit_info:
        load_script().parse_args(base_args(components, tmp_path, *extra))
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_missing_dataset_stops_before_training(components, tmp_path):
    script = load_script()
    args = script.parse_args(base_args(components, tmp_path, "--dataset", str(tmp_path / "nowhere")))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        script.main(args)
    assert not list(tmp_path.glob("checkpoint-*"))


def test_help_documents_every_flag():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})  # fmt: skip
    assert out.returncode == 0
    actions = [a for a in load_script().build_parser()._actions if a.option_strings != ["-h", "--help"]]
    assert all(action.help for action in actions)
    assert all(action.option_strings[0] in out.stdout for action in actions)


@pytest.mark.parametrize("streaming, workers", [(False, 0), (True, 0), (False, 1)])
def test_bad_videos_in_a_videofolder_are_skipped_counted_and_logged(components, tmp_path, caplog, streaming, workers):
    import av
    import numpy as np

    folder = tmp_path / "clips"
    folder.mkdir()
    rows = ["file_name,text"]
    for i in range(6):
        with av.open(str(folder / f"{i}.mp4"), "w") as container:
            stream = container.add_stream("mpeg4", rate=16)
            stream.height = stream.width = 32
            stream.pix_fmt = "yuv420p"
            for t in range(4 if i == 5 else 24):  # clip 5 is too short for 5 frames at 8 fps
                frame = np.full((32, 32, 3), 10 * t, np.uint8)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        rows.append(f"{i}.mp4,a gray square number {i}")
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    rows.append("broken.mp4,a broken clip")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")

    script = load_script()
    args = script.parse_args(base_args(components, tmp_path / "run", "--dataset", str(folder), "--max_train_steps",
                                       "3", "--train_batch_size", "2", "--validation_prompts",
                                       "--dataloader_num_workers", str(workers), *(["--streaming"] if streaming else [])))  # fmt: skip
    with caplog.at_level("INFO"):
        script.main(args)
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 3
    assert "'data/corrupt': 1" in caplog.text, "counted in the main process, also when a worker met it"
    if workers == 0:  # a worker logs the file's name from its own process
        assert "broken.mp4" in caplog.text


def test_bf16_gradient_accumulation_checkpointing_and_tensorboard(components, tmp_path):
    script = load_script()
    args = script.parse_args(base_args(components, tmp_path, "--max_train_steps", "3", "--mixed_precision", "bf16",
                                       "--gradient_accumulation_steps", "2", "--gradient_checkpointing",
                                       "--report_to", "tensorboard", "--validation_prompts"))  # fmt: skip
    script.main(args)
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*")), "tensorboard wrote its event file"


def test_a_text_encoder_folder_without_its_tokenizer_is_refused_and_text_tokenizer_finds_it(components, tmp_path):
    pipeline = tmp_path / "pipeline"
    tiny_pipeline().save_pretrained(pipeline)  # text_encoder/ holds the model only; the tokenizer is in tokenizer/
    script = load_script()
    common = ["--text_encoder", str(pipeline / "text_encoder"), "--max_train_steps", "1", "--validation_prompts"]
    args = script.parse_args(base_args(components, tmp_path / "run", *common))
    with pytest.raises(ValueError, match="unknown tokens only.*--text_tokenizer"):
        script.main(args)
    assert not (tmp_path / "run" / "pipeline").exists()
    args = script.parse_args(base_args(components, tmp_path / "run", *common, "--text_tokenizer", str(pipeline / "tokenizer")))
    pipeline_dir = script.main(args)
    assert len(VideoARPipeline.from_pretrained(pipeline_dir).tokenizer) == len(tiny_pipeline().tokenizer)


def test_precompute_caches_latents_on_disk_and_a_rerun_reuses_them(components, tmp_path, monkeypatch):
    from videoar_hf import VideoARTokenizer

    script = load_script()
    args = base_args(components, tmp_path, "--max_train_steps", "2", "--precompute", "--validation_prompts")
    script.main(script.parse_args(args))
    cached = sorted((tmp_path / "latent_cache").rglob("*.safetensors"))
    assert len(cached) == 32, "one file per clip"
    encoded = []
    original = VideoARTokenizer.encode
    monkeypatch.setattr(VideoARTokenizer, "encode", lambda self, *a, **k: encoded.append(1) or original(self, *a, **k))
    script.main(script.parse_args(args))
    assert not encoded, "the second run trained from the cache"
    assert sorted((tmp_path / "latent_cache").rglob("*.safetensors")) == cached
    copied = shutil.copytree(components / "tokenizer", tmp_path / "same_tokenizer_elsewhere")
    script.main(script.parse_args([*args, "--tokenizer", str(copied)]))
    assert not encoded, "the same tokenizer from another folder reuses the cache"


def test_mid_path_clips_train_as_continuations_of_a_longer_video(components, tmp_path, monkeypatch):
    """`--shapes_mid_path_share`: the cache keeps which clips continue a video, and their first half of latent frames
    (the pipeline's re-encoded context) reaches the loss as IGNORE_INDEX."""
    from safetensors import safe_open

    from videoar_hf.modeling_videoar import IGNORE_INDEX

    script = load_script()
    pretrained = str(components / "pipeline" / "transformer")
    seen = []
    original = VideoARTransformer.forward
    monkeypatch.setattr(VideoARTransformer, "forward", lambda self, *a, **k: seen.append(k.get("labels")) or original(self, *a, **k))
    args = script.parse_args(base_args(components, tmp_path, "--max_train_steps", "3", "--num_frames", "17", "--precompute",
                                       "--shapes_bounce", "--shapes_mid_path_share", "0.5", "--pretrained_transformer",
                                       pretrained, "--validation_prompts"))  # fmt: skip
    config = VideoARTransformer.from_pretrained(script.main(args) / "transformer").config
    assert config.max_latent_frames == 5 and config.reencode_context_frames == 2
    flags = [safe_open(f, "pt").metadata()["continues"] for f in sorted((tmp_path / "latent_cache").rglob("*.safetensors"))]
    assert len(flags) == 32 and 4 <= flags.count("1") <= 28 and set(flags) == {"0", "1"}
    hidden = [(labels[0][:, :, 0, 0, 0] == IGNORE_INDEX) for labels in seen if labels is not None]
    assert len(hidden) == 3
    for hidden_BT in hidden:
        assert (hidden_BT[:, 2:] == False).all() and (hidden_BT[:, 0] == hidden_BT[:, 1]).all()  # noqa: E712
    assert any(hidden_BT.any() for hidden_BT in hidden), "some continuing clips were drawn"


def test_a_later_stage_gives_a_pretrained_transformer_new_training_fields(components, tmp_path, capsys):
    """Stage III (docs/method.md §7): long bouncing clips from a pretrained transformer, with the frame mask and a
    window switched on for this stage alone; the weights' shape-giving fields cannot change."""
    script = load_script()
    stage = '{"frame_mask_prob": 0.3, "frame_mask_window": 2, "error_correction": false}'
    pretrained = str(components / "pipeline" / "transformer")
    args = script.parse_args(base_args(components, tmp_path, "--max_train_steps", "2", "--num_frames", "9",
                                       "--shapes_bounce", "--pretrained_transformer", pretrained,
                                       "--transformer_config", stage))  # fmt: skip
    config = VideoARTransformer.from_pretrained(script.main(args) / "transformer").config
    assert (config.frame_mask_prob, config.frame_mask_window, config.error_correction) == (0.3, 2, False)
    assert config.max_latent_frames == 3 and config.hidden_size == VideoARTransformer.from_pretrained(pretrained).config.hidden_size
    with pytest.raises(SystemExit):
        script.parse_args(base_args(components, tmp_path, "--pretrained_transformer", pretrained,
                                    "--transformer_config", '{"hidden_size": 128, "frame_mask_prob": 0.2}'))  # fmt: skip
    err = capsys.readouterr().err
    assert "may set training fields only" in err and "not ['hidden_size']" in err
    args = script.parse_args(base_args(components, tmp_path / "bad", "--max_train_steps", "1", "--pretrained_transformer",
                                       pretrained, "--transformer_config", '{"frame_mask_window": 0}'))  # fmt: skip
    with pytest.raises(ValueError, match='--transformer_config {"frame_mask_window": 0}: `frame_mask_window` must be'):
        script.main(args)


def test_a_pretrained_transformer_grows_to_a_finer_tokenizers_scales(components, tmp_path):
    """A transformer trained on an f = 8 tokenizer (scales 1, 2, 4) continues on an f = 4 one (scales 1, 2, 4, 8):
    it gains the finer scale and the whole pipeline generates; a tokenizer with other scales is refused."""
    script = load_script()
    pretrained = str(components / "pipeline" / "transformer")
    tiny_pipeline(spatial_compression_ratio=4, scale_schedule=(1, 2, 4, 8)).video_tokenizer.save_pretrained(tmp_path / "fine")
    args = script.parse_args(base_args(components, tmp_path / "run", "--tokenizer", str(tmp_path / "fine"), "--max_train_steps", "2",
                                       "--pretrained_transformer", pretrained, "--validation_prompts"))  # fmt: skip
    pipe = VideoARPipeline.from_pretrained(script.main(args))
    assert pipe.transformer.config.scale_schedule == [1, 2, 4, 8] and pipe.transformer.scale_embed.num_embeddings == 4
    assert pipe("a red circle moving left", num_frames=5, output_type="np").frames.shape == (1, 5, 32, 32, 3)
    tiny_pipeline(scale_schedule=(1, 3, 4)).video_tokenizer.save_pretrained(tmp_path / "other")
    args = script.parse_args(base_args(components, tmp_path / "bad", "--tokenizer", str(tmp_path / "other"), "--max_train_steps", "1",
                                       "--pretrained_transformer", pretrained))  # fmt: skip
    with pytest.raises(ValueError, match=r"does not fit --tokenizer .*other: `scale_schedule` must extend the model's \[1, 2, 4\]"):
        script.main(args)
    assert not (tmp_path / "bad" / "pipeline").exists()


def test_training_refuses_a_context_as_long_as_its_clips_before_any_step(components, tmp_path):
    script = load_script()
    args = script.parse_args(base_args(components, tmp_path, "--max_train_steps", "2",
                                       "--transformer_config", '{"context_frames": 2}'))  # fmt: skip
    with pytest.raises(ValueError, match=r"train on 2 latent frames at most: `context_frames` \(2\) must be below"):
        script.main(args)
    assert not (tmp_path / "pipeline").exists()


def test_a_model_compiled_through_accelerates_switch_trains_saves_and_loads(components, tmp_path, monkeypatch):
    # accelerate compiles the prepared model when its config or ACCELERATE_DYNAMO_BACKEND asks; "eager" wraps and traces
    # it as "inductor" would, without generating kernels
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "eager")
    script = load_script()
    args = script.parse_args(base_args(components, tmp_path, "--max_train_steps", "4", "--checkpointing_steps", "2"))
    pipeline_dir = script.main(args)
    saved = load_file(pipeline_dir / "transformer" / "model.safetensors")
    assert not [name for name in saved if "_orig_mod" in name]
    assert (tmp_path / "samples" / "checkpoint-4" / "00.mp4").stat().st_size > 0
    pipe = VideoARPipeline.from_pretrained(pipeline_dir)
    assert pipe("a blue square moving up", num_frames=5, output_type="np").frames.shape == (1, 5, 32, 32, 3)
