import os

# no test may reach the network: Hub calls fail at once instead of retrying
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

# diffusers' own test mixins need a diffusers checkout: see diffusers_suites/conftest.py
collect_ignore = [] if os.environ.get("VIDEOAR_DIFFUSERS_TESTS") else ["diffusers_suites"]


@pytest.fixture
def tiny_pipe():
    from videoar_hf.testing_utils import tiny_pipeline

    return tiny_pipeline()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one process-wide state; scripts run in-process each get a new one, as in a new process."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="session")
def components(tmp_path_factory):
    """What the training scripts take, saved as a user would: a tiny tokenizer (32 px -> 4x4 latents, scales 1, 2,
    4), a tiny text encoder with its tokenizer, and the whole tiny pipeline."""
    from videoar_hf.testing_utils import tiny_pipeline

    folder = tmp_path_factory.mktemp("components")
    pipe = tiny_pipeline()
    pipe.video_tokenizer.save_pretrained(folder / "tokenizer")
    pipe.text_encoder.save_pretrained(folder / "text_encoder")
    pipe.tokenizer.save_pretrained(folder / "text_encoder")
    pipe.save_pretrained(folder / "pipeline")
    return folder
