"""Class-conditional VideoAR (the paper's UCF-101 setting, docs/method.md §8): a class token in place of the text,
`class_labels` in the pipeline with the class guidance schedule, trained by `train_videoar.py --label_column`."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from videoar_hf import VideoARConfig, VideoARPipeline, VideoARTransformer
from videoar_hf.testing_utils import tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["red circle left", "blue square up", "white triangle down"]


@pytest.fixture
def class_pipe():
    text_pipe = tiny_pipeline()
    torch.manual_seed(0)
    config = VideoARConfig.from_preset("tiny", latent_bits=8, scale_schedule=[1, 2, 4], num_classes=3,
                                       id2label=dict(enumerate(CLASSES)))  # fmt: skip
    pipe = VideoARPipeline(video_tokenizer=text_pipe.video_tokenizer, transformer=VideoARTransformer(config).eval(),
                           text_encoder=None, tokenizer=None)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_class_labels_by_id_or_name_with_the_class_schedule(class_pipe):
    frames = class_pipe(class_labels=[0, "white triangle down"], num_frames=5, generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (2, 5, 32, 32, 3)
    assert class_pipe.guidance_scale == "class-conditional"
    by_id = class_pipe(class_labels=2, num_frames=5, output_type="latent", generator=torch.Generator().manual_seed(1)).frames
    by_name = class_pipe(class_labels="white triangle down", num_frames=5, output_type="latent",
                         generator=torch.Generator().manual_seed(1)).frames  # fmt: skip
    assert torch.equal(by_id, by_name)


def test_the_class_prefix_carries_the_null_class_for_guidance(class_pipe):
    seen = []
    class_pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(k.get("class_labels")), with_kwargs=True)
    class_pipe(class_labels=[1], num_frames=5, num_videos_per_prompt=2)
    assert seen[0].tolist() == [1, 1, 3, 3], "the videos' class, then the null class (id num_classes) for each"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": "a red circle"}, "class-conditional.*pass `class_labels`, not `prompt`"),
        ({}, "pass `class_labels`"),
        ({"class_labels": 3}, "`class_labels`: 3 is not a class"),
        ({"class_labels": "green circle"}, "not a class of this model"),
        ({"class_labels": [0], "next_prompts": [(5, "x")]}, "not `next_prompts`"),
    ],
)
def test_bad_class_requests_are_named(class_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        class_pipe(num_frames=9, **kwargs)


def test_a_text_model_refuses_class_labels(tiny_pipe):
    with pytest.raises(ValueError, match="`class_labels` are for a class-conditional model"):
        tiny_pipe("a red circle", class_labels=[0], num_frames=5)


def load_script():
    spec = importlib.util.spec_from_file_location("train_videoar", ROOT / "examples" / "train_videoar.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_class_model_trains_on_shapes_triples_and_samples_from_class_labels(components, tmp_path):
    script = load_script()
    args = script.parse_args([
        "--tokenizer", str(components / "tokenizer"), "--label_column", "triple", "--dataset", "shapes",
        "--num_clips", "32", "--resolution", "32", "--num_frames", "5", "--train_batch_size", "4",
        "--learning_rate", "3e-3", "--max_train_steps", "20", "--checkpointing_steps", "10", "--report_to", "none",
        "--logging_steps", "1", "--precompute", "--output_dir", str(tmp_path),
    ])  # fmt: skip
    pipeline_dir = script.main(args)
    losses = [r["loss"] for r in json.loads((tmp_path / "history.json").read_text())]
    assert sum(losses[-4:]) < sum(losses[:4])
    assert (tmp_path / "samples" / "checkpoint-20" / "01.mp4").stat().st_size > 0, "samples of the first classes"
    pipe = VideoARPipeline.from_pretrained(pipeline_dir)
    config = pipe.transformer.config
    assert config.num_classes == 60 and config.id2label[0] == "red circle left" and config.max_latent_frames == 2
    assert pipe.text_encoder is None
    frames = pipe(class_labels=["green triangle up"], num_frames=5, output_type="np").frames
    assert frames.shape == (1, 5, 32, 32, 3)


def test_a_videofolder_of_class_folders_trains_a_class_model(components, tmp_path):
    import av
    import numpy as np

    for c, name in enumerate(("ApplyEyeMakeup", "Biking")):
        (tmp_path / "ucf" / name).mkdir(parents=True)
        for i in range(2):
            with av.open(str(tmp_path / "ucf" / name / f"{i}.mp4"), "w") as container:
                stream = container.add_stream("mpeg4", rate=8)
                stream.height = stream.width = 32
                stream.pix_fmt = "yuv420p"
                for t in range(8):
                    frame = np.full((32, 32, 3), 60 * c + 5 * t, np.uint8)
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                container.mux(stream.encode())
    script = load_script()
    args = script.parse_args([
        "--tokenizer", str(components / "tokenizer"), "--label_column", "label", "--dataset", str(tmp_path / "ucf"),
        "--resolution", "32", "--num_frames", "5", "--train_batch_size", "2", "--max_train_steps", "2",
        "--report_to", "none", "--validation_prompts", "--output_dir", str(tmp_path / "run"),
    ])  # fmt: skip
    pipe = VideoARPipeline.from_pretrained(script.main(args))
    assert pipe.transformer.config.id2label == {0: "ApplyEyeMakeup", 1: "Biking"}
    assert pipe(class_labels="Biking", num_frames=5).frames.shape == (1, 5, 32, 32, 3)


def test_text_encoder_or_label_column_is_required(components, tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_script().parse_args(["--tokenizer", str(components / "tokenizer"), "--output_dir", str(tmp_path)])
    assert "--text_encoder for a text-to-video model, or --label_column" in capsys.readouterr().err
