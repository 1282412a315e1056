"""The Gradio demo, driven through gradio_client on 127.0.0.1 as a Space's API user would."""

import socket

import imageio.v3 as iio
import pytest

gradio = pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from videoar_hf.app import DemoLimits, RequestError, build_demo, check_request  # noqa: E402
from videoar_hf.testing_utils import tiny_pipeline  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    demo = build_demo(tiny_pipeline(), DemoLimits(max_frames=9, max_resolution=32, max_prompt_length=40))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    demo.close()


def request(client, prompt="a red circle moving left", num_frames=9, resolution=32, seed=3, randomize=False, image=None):
    return client.predict(
        prompt, "", num_frames, resolution, seed, randomize, 3.0, 0, 1.0, image, api_name="/generate"
    )


def test_a_request_returns_a_playable_mp4_and_its_seed(client):
    preview, video, seed = request(client)
    frames = iio.imread(video)
    assert frames.shape == (9, 32, 32, 3)
    assert iio.imread(preview).shape[:2] == (256, 256)  # the last frame, enlarged 8x by whole pixels
    assert seed == 3


def test_same_seed_same_video_and_randomize_picks_a_seed(client):
    a, b = iio.imread(request(client, seed=5)[1]), iio.imread(request(client, seed=5)[1])
    assert (a == b).all()
    assert request(client, randomize=True)[2] >= 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_frames": 33}, "frames: 33 is not allowed"),  # over the frames slider's bound
        ({"num_frames": 7}, "frames: 7 is not allowed"),  # not 1 + 4k
        ({"resolution": 64}, "resolution: 64 is not allowed"),
        ({"resolution": 20}, "resolution: 20 is not allowed"),
        ({"prompt": "x" * 41}, "prompt: 41 characters; at most 40"),
        ({"prompt": "  "}, "prompt: type what"),
    ],
)
def test_requests_over_the_limits_get_a_clear_error_and_the_server_keeps_serving(client, kwargs, message):
    with pytest.raises(AppError, match=message):
        request(client, **kwargs)
    assert iio.imread(request(client)[1]).shape[0] == 9


def test_check_request_names_each_input():
    pipe, limits = tiny_pipeline(), DemoLimits(max_frames=17, max_resolution=64, max_prompt_length=10)
    check_request(pipe, limits, "a red one", None, 17, 32)
    for args, name in [
        (("", None, 17, 32), "prompt"),
        (("a red one", "n" * 11, 17, 32), "negative prompt"),
        (("a red one", None, 21, 32), "frames"),
        (("a red one", None, 17, 64), "resolution"),  # within the limit, but the tiny schedule serves 8, 16, 32
    ]:
        with pytest.raises(RequestError, match=f"^{name}:"):
            check_request(pipe, limits, *args)


def test_the_queue_is_bounded():
    demo = build_demo(tiny_pipeline(), DemoLimits(queue_max_size=3, concurrency_limit=1))
    assert demo._queue.max_size == 3
    generate = next(fn for fn in demo.fns.values() if fn.name == "generate")
    assert generate.concurrency_limit == 1 and demo._queue.default_concurrency_limit == 1


def test_the_gpu_wrapper_wraps_the_generating_function():
    wrapped = []

    def gpu(fn):
        wrapped.append(fn.__name__)
        return fn

    build_demo(tiny_pipeline(), gpu=gpu)
    assert wrapped == ["generate"]


def test_the_space_folder_has_its_front_matter_and_runs(tmp_path, monkeypatch):
    import runpy
    from pathlib import Path

    import yaml

    space = Path(__file__).parents[1] / "examples" / "space"
    front_matter = yaml.safe_load((space / "README.md").read_text().split("---")[1])
    assert front_matter["sdk"] == "gradio" and front_matter["app_file"] == "app.py"
    assert front_matter["sdk_version"] == gradio.__version__
    for key in ("license", "models", "tags", "short_description"):
        assert front_matter[key], key
    assert len(front_matter["short_description"]) <= 60  # the Hub's limit
    assert {"gradio", "videoar-hf"} <= {line.split("=")[0].split(">")[0] for line in (space / "requirements.txt").read_text().split()}

    tiny_pipeline().save_pretrained(tmp_path / "tiny")
    monkeypatch.setenv("VIDEOAR_MODEL", str(tmp_path / "tiny"))
    namespace = runpy.run_path(str(space / "app.py"))  # not as __main__: builds the demo without launching it
    assert isinstance(namespace["demo"], gradio.Blocks)


def test_videoar_app_launches_on_the_given_host_and_port(tmp_path, monkeypatch):
    from videoar_hf.cli import main

    launched = {}
    monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **kwargs: launched.update(kwargs))
    tiny_pipeline().save_pretrained(tmp_path / "tiny")
    assert main(["app", "--model", str(tmp_path / "tiny"), "--host", "127.0.0.1", "--port", "7861"]) == 0
    assert launched == {"server_name": "127.0.0.1", "server_port": 7861}


def test_videoar_app_bad_port(capsys):
    from videoar_hf.cli import main

    assert main(["app", "--port", "70000"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err


def test_a_then_prompt_continues_the_video_under_it(client):
    args = ("a red circle moving left", "", 9, 32, 3, False, 3.0, 0, 1.0, None)
    _, video, _ = client.predict(*args, "a blue square moving up", 5, api_name="/generate")
    assert iio.imread(video).shape == (9, 32, 32, 3)
    with pytest.raises(AppError, match="from frame: 4 does not start a latent frame"):
        client.predict(*args, "a blue square moving up", 4, api_name="/generate")
