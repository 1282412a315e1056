import imageio.v3 as iio
import pytest

from videoar_hf.cli import main
from videoar_hf.testing_utils import tiny_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    tiny_pipeline().save_pretrained(path)
    return path


def test_generate_writes_a_playable_video(model_dir, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    assert main(["generate", "a red circle moving left", "-o", str(out), "--model", str(model_dir), "--num-frames", "9"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    frames = iio.imread(out)
    assert frames.shape[0] == 9 and frames.shape[-1] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"], "no temporary file is left behind"


def test_generate_stream_reports_each_latent_frame_and_writes_the_same_video(model_dir, tmp_path, capsys):
    common = ["a red circle moving left", "--model", str(model_dir), "--num-frames", "9", "--seed", "4"]
    assert main(["generate", *common, "-o", str(tmp_path / "whole.gif")]) == 0
    capsys.readouterr()
    assert main(["generate", *common, "-o", str(tmp_path / "streamed.gif"), "--stream"]) == 0
    err = capsys.readouterr().err
    reports = ["videoar: frames 1-1 of 9 ready", "videoar: frames 2-5 of 9 ready", "videoar: frames 6-9 of 9 ready"]
    positions = [err.find(report) for report in reports]  # tqdm's bar shares lines with them
    assert -1 not in positions and positions == sorted(positions)
    assert (iio.imread(tmp_path / "whole.gif") == iio.imread(tmp_path / "streamed.gif")).all()


def test_generate_history_guidance_flags_reach_the_pipeline(model_dir, tmp_path):
    common = ["a red circle moving left", "--model", str(model_dir), "--num-frames", "13", "--seed", "3"]
    assert main(["generate", *common, "-o", str(tmp_path / "default.gif")]) == 0
    assert main(["generate", *common, "-o", str(tmp_path / "off.gif"), "--history-guidance-scale", "1"]) == 0
    assert main(["generate", *common, "-o", str(tmp_path / "guided.gif"), "--history-guidance-scale", "4",
                 "--history-frames", "1"]) == 0  # fmt: skip
    assert main(["generate", *common, "-o", str(tmp_path / "late.gif"), "--history-guidance-scale", "4",
                 "--history-frames", "1", "--history-guidance-start", "3"]) == 0  # fmt: skip
    default, off, guided, late = (iio.imread(tmp_path / f"{name}.gif") for name in ("default", "off", "guided", "late"))
    assert (default == off).all(), "1 is the tiny model's default: guidance off"
    assert not (default == guided).all()
    assert (default[:5] == guided[:5]).all(), "the first two latent frames have no history to weigh"
    assert (default[:9] == late[:9]).all() and not (default[9:] == late[9:]).all(), "guided from latent frame 3 on"


def test_generate_without_any_model_says_it_is_random(tmp_path, capsys, monkeypatch):
    import videoar_hf.shipped_model as shipped

    monkeypatch.setattr(shipped, "SHIPPED_MODEL_DIR", tmp_path / "absent")
    out = tmp_path / "clip.gif"
    assert main(["generate", "a red circle", "-o", str(out), "--num-frames", "5"]) == 0
    assert "RANDOMLY INITIALISED" in capsys.readouterr().err
    assert out.stat().st_size > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["-o", "clip.avi"], "unsupported extension"),
        (["-o", "/nonexistent-dir/clip.mp4"], "does not exist"),
        (["--num-frames", "8"], "num_frames"),
        (["--top-p", "0"], "top_p"),
        (["--history-guidance-scale", "nan"], "history_guidance_scale"),
        (["--history-frames", "-1"], "--history-frames"),
        (["--history-guidance-start", "-1"], "--history-guidance-start"),
        (["--guidance-scale", "loud"], "guidance_scale"),
        (["--model", "/no/such/model/dir"], "--model"),
        (["--fps", "0"], "--fps"),
        (["--lora", "/no/such/adapter:0.5"], "--lora '/no/such/adapter:0.5': LoRA adapter '/no/such/adapter' is neither"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(model_dir, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    if "--model" not in args:
        args = args + ["--model", str(model_dir)]
    assert main(["generate", "a red circle", *args]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("videoar: error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in err


def test_generate_continues_an_image_or_a_video_and_writes_a_gif(model_dir, tmp_path):
    import numpy as np
    import PIL.Image

    image = tmp_path / "first.png"
    PIL.Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(image)
    out = tmp_path / "from_image.mp4"
    assert main(["generate", "a circle", "-o", str(out), "--model", str(model_dir), "--num-frames", "9",
                 "--image", str(image), "--gif"]) == 0  # fmt: skip
    assert iio.imread(out).shape[0] == 9
    assert len(iio.imread(out.with_suffix(".gif"))) == 9

    # a 7-frame video: its first 5 (= 1 + 4k) frames are the context
    video = tmp_path / "context.mp4"
    iio.imwrite(video, np.random.default_rng(0).integers(0, 255, (7, 32, 32, 3), dtype=np.uint8), fps=8)
    out = tmp_path / "continued.mp4"
    assert main(["generate", "a circle", "-o", str(out), "--model", str(model_dir), "--num-frames", "9",
                 "--video", str(video)]) == 0  # fmt: skip
    assert iio.imread(out).shape[0] == 9


@pytest.mark.parametrize("flag", ["--image", "--video"])
def test_unreadable_conditioning_is_one_line(model_dir, tmp_path, capsys, flag):
    broken = tmp_path / "broken.bin"
    broken.write_bytes(b"not media")
    assert main(["generate", "x", "-o", str(tmp_path / "o.mp4"), "--model", str(model_dir), flag, str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"videoar: error: {flag}" in err and "cannot be read" in err and "Traceback" not in err


def test_eval_writes_its_reports(tmp_path, capsys):
    from videoar_hf.testing_utils import tiny_pipeline

    model = tmp_path / "tiny64"
    tiny_pipeline(sample_size=64, scale_schedule=(1, 2, 4, 8)).save_pretrained(model)
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(model), "-o", str(out), "--num-prompts", "2", "--seeds-per-held-out", "1",
                 "--num-frames", "5", "--suites", "train", "tokenizer"]) == 0  # fmt: skip
    assert "| train" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "metrics.md", "samples.png"}


def test_eval_bad_input(model_dir, capsys):
    assert main(["eval", "--model", str(model_dir), "--num-prompts", "0"]) == 2
    assert "argument --num-prompts: must be a positive integer, got 0" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--suites", "nonsense", "--num-prompts", "1"]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--suites", "long", "--long-num-frames", "64"]) == 2
    assert "`long_num_frames` must be 1 + 4k frames, got 64" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--new-colours", "orange"]) == 2
    assert "--new-colours: a colour is NAME=R,G,B" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--lora", "/no/adapter"]) == 2
    assert "--lora '/no/adapter'" in capsys.readouterr().err


def test_generate_uses_the_shipped_model_by_default(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    assert main(["generate", "a blue square moving right", "-o", str(out), "--num-frames", "5", "--seed", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out) and "RANDOMLY" not in captured.err
    assert iio.imread(out).shape == (5, 64, 64, 3)


def test_shipped_model_path_names_the_folder_when_missing(monkeypatch, tmp_path):
    import videoar_hf.shipped_model as shipped

    monkeypatch.setattr(shipped, "SHIPPED_MODEL_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="absent"):
        shipped.shipped_model_path()
    tiny_pipeline().save_pretrained(tmp_path / "absent")
    assert shipped.shipped_model_path() == tmp_path / "absent"


def test_generate_with_loras_and_scales(tmp_path, monkeypatch, capsys):
    import videoar_hf.cli as cli
    from videoar_hf.testing_utils import tiny_lora_adapter

    pipe = tiny_pipeline()
    first = tiny_lora_adapter(pipe.transformer, tmp_path / "first", seed=1)
    second = tiny_lora_adapter(pipe.transformer, tmp_path / "second", seed=2, target_modules=("k_proj",))
    monkeypatch.setattr(cli, "_load_pipeline", lambda model: pipe)
    out = tmp_path / "clip.mp4"
    assert main(["generate", "a red circle", "-o", str(out), "--num-frames", "5", "--lora", str(first),
                 "--lora", f"{second}:0.5"]) == 0  # fmt: skip
    assert pipe.get_active_adapters() == ["lora_0", "lora_1"]
    assert pipe.transformer.layers[0].self_attn.k_proj.scaling == {"lora_1": 0.5}
    assert pipe.transformer.layers[0].self_attn.q_proj.scaling == {"lora_0": 1.0}
    assert iio.imread(out).shape[0] == 5
