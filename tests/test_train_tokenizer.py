"""`examples/train_tokenizer.py` end to end on CPU with a tiny tokenizer."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from videoar_hf import VideoARTokenizer
from videoar_hf.causal_cnn import CausalConv3d
from videoar_hf.testing_utils import tiny_tokenizer_config

ROOT = Path(__file__).resolve().parents[1]
TINY = tiny_tokenizer_config()


def load_script():
    spec = importlib.util.spec_from_file_location("train_tokenizer", ROOT / "examples" / "train_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def args_for(output_dir, *extra):
    return load_script().parse_args([
        "--tokenizer_config", json.dumps(TINY), "--output_dir", str(output_dir), "--dataset", "shapes",
        "--num_clips", "32", "--resolution", "32", "--num_frames", "5", "--train_batch_size", "4",
        "--learning_rate", "3e-3", "--report_to", "none", "--logging_steps", "1", *extra,
    ])  # fmt: skip


def history(output_dir):
    return json.loads((Path(output_dir) / "history.json").read_text())


def test_training_runs_and_reconstruction_improves(tmp_path):
    tokenizer_dir = load_script().main(args_for(tmp_path, "--max_train_steps", "25", "--checkpointing_steps", "25"))
    records = history(tmp_path)
    assert len(records) == 25
    first, last = records[:3], records[-3:]
    assert sum(r["l1_loss"] for r in last) < 0.8 * sum(r["l1_loss"] for r in first)
    assert sum(r["psnr"] for r in last) > sum(r["psnr"] for r in first)
    tokenizer = VideoARTokenizer.from_pretrained(tokenizer_dir)
    assert tokenizer.config.latent_channels == 8
    assert (tmp_path / "samples" / "checkpoint-25" / "00.mp4").stat().st_size > 0
    assert (tmp_path / "loss_curve.png").stat().st_size > 0


def test_gan_switches_on_after_warm_up_and_resume_is_exact(tmp_path):
    gan = ["--max_train_steps", "6", "--checkpointing_steps", "2", "--gan_weight", "0.1", "--gan_start_step", "3",
           "--use_ema", "--ema_decay", "0.9", "--mixed_precision", "bf16"]  # fmt: skip
    load_script().main(args_for(tmp_path / "full", *gan))
    records = history(tmp_path / "full")
    assert all("discriminator_hinge_loss" not in r for r in records[:3])
    assert all("discriminator_hinge_loss" in r and r["gan_loss"] != 0 for r in records[3:])

    # resume from step 4, with the LeCAM averages, EMA and RNGs restored
    shutil.copytree(tmp_path / "full" / "checkpoint-4", tmp_path / "resumed" / "checkpoint-4")
    load_script().main(args_for(tmp_path / "resumed", *gan, "--resume_from_checkpoint", "latest"))
    assert history(tmp_path / "resumed") == records
    full = load_file(tmp_path / "full" / "tokenizer" / "diffusion_pytorch_model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "tokenizer" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_init_from_an_inflated_2d_tokenizer(tmp_path):
    # a 2D state dict in LDM naming: each 3D kernel's last temporal slice, without our CausalConv3d's `.conv` level
    torch.manual_seed(1)
    source = VideoARTokenizer(**TINY)
    causal = {name for name, module in source.named_modules() if isinstance(module, CausalConv3d)}
    state_2d = {}
    for key, value in source.state_dict().items():
        module, _, leaf = key.rpartition(".conv.")
        key_2d = f"{module}.{leaf}" if module in causal else key
        state_2d[key_2d] = (value[:, :, -1] if value.ndim == 5 else value).contiguous()
    save_file(state_2d, tmp_path / "tokenizer_2d.safetensors")
    args = args_for(tmp_path / "run", "--max_train_steps", "1", "--init_from_2d", str(tmp_path / "tokenizer_2d.safetensors"))
    tokenizer = load_script().build_tokenizer(args)
    conv_in = tokenizer.encoder.conv_in.conv.weight
    torch.testing.assert_close(conv_in[:, :, -1], source.encoder.conv_in.conv.weight[:, :, -1])
    assert conv_in[:, :, :-1].abs().sum() == 0, "earlier temporal slices start at zero"


def test_decoder_only_fine_tune_keeps_the_latents(tmp_path):
    torch.manual_seed(0)
    VideoARTokenizer(**TINY).save_pretrained(tmp_path / "base")
    base = VideoARTokenizer.from_pretrained(tmp_path / "base")
    args = load_script().parse_args([
        "--pretrained_tokenizer", str(tmp_path / "base"), "--train_decoder_only", "--output_dir", str(tmp_path / "run"),
        "--dataset", "shapes", "--num_clips", "8", "--resolution", "32", "--num_frames", "5", "--train_batch_size", "4",
        "--learning_rate", "3e-3", "--report_to", "none", "--max_train_steps", "3", "--colour_mix_prob", "0.5",
    ])  # fmt: skip
    tuned = VideoARTokenizer.from_pretrained(load_script().main(args))
    before, after = base.state_dict(), tuned.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("decoder.") for name in changed)
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(tuned.encode(video).latents, base.encode(video).latents, rtol=0, atol=0)


def test_a_pretrained_tokenizer_takes_config_overrides(tmp_path):
    # a trained tau-4 tokenizer continued at tau 2, and its decoder alone on a finer scale schedule (TUNING.md, 12-13)
    torch.manual_seed(0)
    VideoARTokenizer(**TINY).save_pretrained(tmp_path / "base")
    run = ["--pretrained_tokenizer", str(tmp_path / "base"), "--output_dir", str(tmp_path / "run"), "--dataset", "shapes",
           "--num_clips", "8", "--resolution", "32", "--num_frames", "5", "--train_batch_size", "4",
           "--report_to", "none", "--max_train_steps", "1"]  # fmt: skip
    tuned = VideoARTokenizer.from_pretrained(load_script().main(load_script().parse_args(
        [*run, "--tokenizer_config", '{"temporal_compression_ratio": 2}'])))  # fmt: skip
    assert tuned.config.temporal_compression_ratio == 2 and tuned.config.latent_channels == TINY["latent_channels"]
    with torch.no_grad():
        assert tuned.encode(torch.rand(1, 3, 5, 32, 32) * 2 - 1).latents.shape[2] == 3
    requantized = VideoARTokenizer.from_pretrained(load_script().main(load_script().parse_args(
        [*run, "--output_dir", str(tmp_path / "finer"), "--train_decoder_only", "--tokenizer_config",
         '{"scale_schedule": [1, 2, 3, 4]}'])))  # fmt: skip
    assert requantized.config.scale_schedule == [1, 2, 3, 4]
    before = VideoARTokenizer.from_pretrained(tmp_path / "base").encoder.state_dict()
    assert all(torch.equal(before[name], weight) for name, weight in requantized.encoder.state_dict().items())
    bad = [*run, "--output_dir", str(tmp_path / "bad"), "--tokenizer_config"]
    for overrides, message in (('{"tau": 2}', "not VideoARTokenizer config fields"), ('{"latent_channels": 4}', "fit")):
        with pytest.raises(ValueError, match=message):
            load_script().main(load_script().parse_args([*bad, overrides]))
    assert not (tmp_path / "bad" / "tokenizer").exists()


def test_nested_dropout_decodes_some_steps_from_the_coarse_scales_alone(tmp_path, monkeypatch):
    """--nested_dropout_prob: about that share of steps decode the first 1..K-1 scales (K = 3 at 32 px), logged as
    `nested_psnr`; the other steps decode the whole pyramid, logged as `psnr`."""
    seen = []
    original = VideoARTokenizer.forward
    monkeypatch.setattr(VideoARTokenizer, "forward", lambda self, *a, **k: seen.append(k.get("num_scales")) or original(self, *a, **k))
    load_script().main(args_for(tmp_path, "--max_train_steps", "12", "--nested_dropout_prob", "0.5"))
    during_training = seen[:12]  # then the samples at the end decode whole pyramids
    assert set(during_training) == {None, 1, 2}
    records = history(tmp_path)
    assert [("nested_psnr" in r, "psnr" in r) for r in records] == [(k is not None, k is None) for k in during_training]


def test_colour_mixing_recolours_some_clips_and_keeps_black():
    mix_colours = load_script().mix_colours
    video = -torch.ones(64, 3, 2, 4, 4)
    video[:, 0, :, 1:3, 1:3] = 1  # a red square on black
    torch.manual_seed(0)
    mixed = mix_colours(video, 0.5)
    assert torch.equal(mixed[:, :, :, 0, 0], video[:, :, :, 0, 0]), "black stays black"
    recoloured = (mixed != video).flatten(1).any(1)
    assert 16 < recoloured.sum() < 48
    colours = mixed[recoloured][:, :, 0, 1, 1]
    assert colours.min() < -0.5 and colours[:, 1].max() > 0.5, "the red becomes other colours"
    assert torch.equal(mix_colours(video, 0.0), video)


def pooled_teacher_error(student, teacher, video):
    with torch.no_grad():
        return load_script().pooled_latent_error(student.encode(video).latents, teacher.encode(video).latents).item()


def test_a_teacher_tokenizer_makes_the_pooled_latents_its_own_and_so_the_coarse_bits(tmp_path):
    # an f = 4 tokenizer taught by an f = 8 one: pooled to 4 x 4, its latents become the teacher's (TUNING.md, 34)
    torch.manual_seed(0)
    VideoARTokenizer(**TINY).save_pretrained(tmp_path / "teacher")
    teacher = VideoARTokenizer.from_pretrained(tmp_path / "teacher")
    student_config = json.dumps({**TINY, "channel_multipliers": [1, 2, 2], "spatial_compression_ratio": 4,
                                 "scale_schedule": [1, 2, 4, 8]})
    runs = {}
    for weight in ("0", "10"):
        torch.manual_seed(0)
        args = args_for(tmp_path / weight, "--tokenizer_config", student_config, "--max_train_steps", "40",
                        "--teacher_tokenizer", str(tmp_path / "teacher"), "--teacher_weight", weight)  # fmt: skip
        runs[weight] = VideoARTokenizer.from_pretrained(load_script().main(args))
        assert history(tmp_path / weight)[-1]["teacher_loss"] >= 0
    video = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    assert pooled_teacher_error(runs["10"], teacher, video) < 0.5 * pooled_teacher_error(runs["0"], teacher, video)

    def coarse_bit_agreement(student):
        with torch.no_grad():
            ours = student.quantizer.residual_quantize(student.encode(video).latents, [(1, 1), (2, 2), (4, 4), (8, 8)])
            theirs = teacher.quantizer.residual_quantize(teacher.encode(video).latents, [(1, 1), (2, 2), (4, 4)])
        return [(a == b).float().mean().item() for a, b in zip(ours.bits, theirs.bits)]

    taught, untaught = coarse_bit_agreement(runs["10"]), coarse_bit_agreement(runs["0"])
    assert all(a > b + 0.1 for a, b in zip(taught, untaught)), (taught, untaught)


def test_a_teacher_of_another_kind_is_refused_before_training(tmp_path):
    VideoARTokenizer(**{**TINY, "latent_channels": 4, "scale_schedule": [1, 4]}).save_pretrained(tmp_path / "teacher")
    args = args_for(tmp_path / "run", "--teacher_tokenizer", str(tmp_path / "teacher"))
    with pytest.raises(ValueError, match="--teacher_tokenizer .* latent_channels 4 .*scale_schedule"):
        load_script().main(args)
    assert not list((tmp_path / "run").glob("checkpoint-*"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--teacher_tokenizer", "/no/such/tokenizer"], "--teacher_tokenizer"),
        (["--teacher_weight", "-1"], "--teacher_weight must be >= 0"),
        (["--colour_mix_prob", "1.5"], "--colour_mix_prob must be in [0, 1]"),
        (["--nested_dropout_prob", "-0.1"], "--nested_dropout_prob must be in [0, 1]"),
        (["--init_from_2d", "weights.pth"], "--init_from_2d"),
        (["--gan_weight", "-1"], "--gan_weight"),
        (["--foreground_weight", "-0.5"], "--foreground_weight"),
        (["--foreground_dilation", "-1"], "--foreground_dilation must be >= 0"),
        (["--reinflate"], "--reinflate needs --pretrained_tokenizer"),
        (["--train_decoder_only"], "--train_decoder_only needs --pretrained_tokenizer"),
        (["--tokenizer_config", "{bad json"], "--tokenizer_config"),
        (["--perceptual_model", "/no/such/backbone"], "--perceptual_model"),
    ],
)
def test_bad_flags_stop_with_one_line(tmp_path, capsys, extra, message):
    if extra[0] == "--init_from_2d":
        (tmp_path / "weights.pth").write_bytes(b"pickle")
        extra = [extra[0], str(tmp_path / "weights.pth")]
    with pytest.raises(SystemExit) as exit_info:
        args_for(tmp_path, *extra)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_stage_the_tokenizer_cannot_serve_stops_before_training(tmp_path):
    with pytest.raises(ValueError, match="num_frames"):
        load_script().main(args_for(tmp_path, "--num_frames", "6"))
    assert not list(tmp_path.glob("checkpoint-*"))


def test_help_documents_every_flag():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "train_tokenizer.py"), "--help"], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})  # fmt: skip
    assert out.returncode == 0
    actions = [a for a in load_script().build_parser()._actions if a.option_strings != ["-h", "--help"]]
    assert all(action.help for action in actions)
    assert all(action.option_strings[0] in out.stdout for action in actions)
