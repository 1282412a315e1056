"""The three training scripts on 2 CPU processes over gloo, under DDP and FSDP2, against 1 process with the same
global batch: the same weights (within 1e-5), exact resume, EMA, validation samples and a loadable result.

FSDP runs through `tests/fsdp_on_cpu.py`, since accelerate enables FSDP on GPU backends only (see that file).
Every stochastic part stays on (caption dropout, error correction, the frame mask): each sample draws its own
numbers whichever process holds it, so the runs can only agree if that holds.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from videoar_hf import VideoARPipeline
from videoar_hf.testing_utils import tiny_tokenizer_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ACCELERATE = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
FSDP_FLAGS = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
              "--fsdp_state_dict_type", "SHARDED_STATE_DICT", "--fsdp_reshard_after_forward", "true"]  # fmt: skip
# the unit FSDP shards: the transformer's decoder layers, the tokenizer's resnet blocks
EMA = ["--use_ema", "--ema_decay", "0.9"]
WRAPPED = {"train_videoar": "VideoARDecoderLayer", "train_lora": "VideoARDecoderLayer", "train_tokenizer": "ResnetBlock3D"}

pytestmark = pytest.mark.skipif(not Path(ACCELERATE).exists(), reason="needs the accelerate launcher")


def environment(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1",
            "OMP_NUM_THREADS": "1", **extra}  # fmt: skip


def launch(script: str, args: list[str], mode: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `examples/{script}.py` as "one" process, or two under "ddp" or "fsdp"."""
    target = [str(EXAMPLES / f"{script}.py"), *args]
    if mode == "one":
        command = [sys.executable, *target]
    else:
        launcher = [ACCELERATE, "launch", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no"]  # fmt: skip
        if mode == "ddp":
            command = [*launcher, "--multi_gpu", *target]
        else:
            wrap = ["--fsdp_transformer_layer_cls_to_wrap", WRAPPED[script]]
            command = [*launcher, *FSDP_FLAGS, *wrap, str(ROOT / "tests" / "fsdp_on_cpu.py"), *target]
    result = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def common(output_dir: Path, *extra) -> list[str]:
    return ["--output_dir", str(output_dir), "--dataset", "shapes", "--num_clips", "32", "--resolution", "32",
            "--num_frames", "5", "--train_batch_size", "4", "--report_to", "none", "--logging_steps", "1",
            "--max_train_steps", "4", "--checkpointing_steps", "2", *EMA,
            "--dataloader_num_workers", "0", *extra]  # fmt: skip


def script_args(script: str, components: Path, output_dir: Path, *extra) -> list[str]:
    if script == "train_videoar":
        model = ["--tokenizer", str(components / "tokenizer"), "--text_encoder", str(components / "text_encoder"),
                 "--learning_rate", "3e-3", "--text_dropout", "0.5", "--validation_prompts", "a red circle moving left"]  # fmt: skip
    elif script == "train_lora":
        model = ["--pretrained_model", str(components / "pipeline"), "--learning_rate", "1e-2", "--rank", "4",
                 "--text_dropout", "0.5", "--validation_prompts", "a red circle moving left", "--precompute"]  # fmt: skip
    else:
        model = ["--tokenizer_config", json.dumps(tiny_tokenizer_config()), "--learning_rate", "1e-3", "--colour_mix_prob", "0.5"]
    return common(output_dir, *model, *extra)


def final_weights(script: str, output_dir: Path) -> dict[str, torch.Tensor]:
    file = {
        "train_videoar": "pipeline/transformer/model.safetensors",
        "train_lora": "adapter/adapter_model.safetensors",
        "train_tokenizer": "tokenizer/diffusion_pytorch_model.safetensors",
    }[script]
    return load_file(output_dir / file)


def losses(output_dir: Path) -> list[float]:
    return [r["loss"] for r in json.loads((output_dir / "history.json").read_text())]


def assert_close(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


@pytest.fixture(scope="module")
def one_process_runs(components, tmp_path_factory):
    """The 1-process reference of every script, run once for the module."""
    folder = tmp_path_factory.mktemp("one")
    for script in WRAPPED:
        launch(script, script_args(script, components, folder / script), "one")
    return folder


@pytest.mark.parametrize("mode", ["fsdp", "ddp"])
@pytest.mark.parametrize("script", list(WRAPPED))
def test_two_processes_match_one_and_resume_exactly(components, one_process_runs, tmp_path, script, mode):
    run = tmp_path / "run"
    result = launch(script, script_args(script, components, run), mode)
    assert f"2 process(es), {'FSDP' if mode == 'fsdp' else 'MULTI_CPU'}" in result.stderr
    assert result.stderr.count("step 4/4") == 1, "logs come from the main process only"
    assert_close(final_weights(script, run), final_weights(script, one_process_runs / script))
    assert losses(run) == pytest.approx(losses(one_process_runs / script), rel=1e-5)
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["checkpoint-2", "checkpoint-4"]

    # resume from the middle: the same weights and history, bit for bit
    shutil.copytree(run / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    launch(script, script_args(script, components, tmp_path / "resumed", "--resume_from_checkpoint", "latest"), mode)
    resumed, full = final_weights(script, tmp_path / "resumed"), final_weights(script, run)
    assert all(torch.equal(resumed[k], full[k]) for k in full)
    assert losses(tmp_path / "resumed") == losses(run)

    if script == "train_lora":  # --precompute: each process encoded its share of the clips
        assert len(list((run / "latent_cache").rglob("*.safetensors"))) == 32
    if script == "train_videoar":
        assert (run / "samples" / "checkpoint-4" / "00.mp4").stat().st_size > 0
        pipe = VideoARPipeline.from_pretrained(run / "pipeline")
        assert pipe("a blue square moving up", num_frames=5, output_type="np").frames.shape == (1, 5, 32, 32, 3)


def test_fsdp_on_cpu_without_the_test_helper_stops_with_an_error(components, tmp_path):
    # accelerate would fall back to DDP and exit 0 having run something else than asked
    launcher = [ACCELERATE, "launch", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", *FSDP_FLAGS, "--fsdp_transformer_layer_cls_to_wrap", "VideoARDecoderLayer"]  # fmt: skip
    script = [str(EXAMPLES / "train_videoar.py"), *script_args("train_videoar", components, tmp_path / "run")]
    result = subprocess.run([*launcher, *script], env=environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "asks for FSDP, but accelerate set up MULTI_CPU" in result.stderr
    assert not (tmp_path / "run" / "pipeline").exists()


def test_processes_that_accelerate_does_not_join_stop_with_an_error(components, tmp_path):
    # the FSDP config with `use_cpu`: torchrun starts two processes, accelerate makes each a job of its own
    config = tmp_path / "fsdp_cpu.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\nuse_cpu: true\nnum_processes: 2\n"
                      "num_machines: 1\nmixed_precision: 'no'\nfsdp_config:\n  fsdp_version: 2\n")  # fmt: skip
    env = {k: v for k, v in environment().items() if k != "ACCELERATE_USE_CPU"}
    command = [ACCELERATE, "launch", "--config_file", str(config), str(EXAMPLES / "train_videoar.py"),
               *script_args("train_videoar", components, tmp_path / "run")]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.count("train_videoar: error: 2 processes were launched but accelerate joined 1") >= 1
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_a_global_batch_that_does_not_split_is_one_line(components, tmp_path):
    result = launch("train_videoar", script_args("train_videoar", components, tmp_path / "run", "--train_batch_size", "3"),
                    "ddp", check=False)  # fmt: skip
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("train_videoar: error:")]
    # one line per process that got to say it (the launcher may stop the other first)
    assert errors and all("the global `batch_size` of 3 does not split across 2 processes" in e for e in errors)
    assert "[rank0]: Traceback" not in result.stderr, "one line per process (the launcher adds its own report)"


def write_clips(folder: Path, count: int) -> Path:
    """`count` mp4s of 24 frames at 16 fps, each a different grey level, with captions."""
    import av
    import numpy as np

    folder.mkdir(parents=True)
    rows = ["file_name,text"]
    for i in range(count):
        with av.open(str(folder / f"{i}.mp4"), "w") as container:
            stream = container.add_stream("mpeg4", rate=16)
            stream.height = stream.width = 32
            stream.pix_fmt = "yuv420p"
            for t in range(24):
                frame = np.full((32, 32, 3), (20 * i + 3 * t) % 256, np.uint8)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        rows.append(f"{i}.mp4,a grey square number {i}")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_a_stream_is_split_across_processes_and_resumes_without_replaying(components, tmp_path):
    clips = write_clips(tmp_path / "clips", 12)
    args = ["--dataset", str(clips), "--streaming", "--train_batch_size", "2", "--validation_prompts"]
    run = tmp_path / "run"
    launch("train_videoar", script_args("train_videoar", components, run, *args), "ddp")
    states = [json.loads((run / "checkpoint-2" / f"data_state_{rank}.json").read_text()) for rank in (0, 1)]
    assert all(state["False"]["position"] >= 1 for state in states), "each process saves its place in its shard"

    shutil.copytree(run / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    launch("train_videoar", script_args("train_videoar", components, tmp_path / "resumed", *args,
                                        "--resume_from_checkpoint", "latest"), "ddp")  # fmt: skip
    resumed, full = final_weights("train_videoar", tmp_path / "resumed"), final_weights("train_videoar", run)
    assert all(torch.equal(resumed[k], full[k]) for k in full)
    assert losses(tmp_path / "resumed") == losses(run)
