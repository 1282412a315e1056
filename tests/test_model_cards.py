"""Every card in model_cards/: Hub metadata that parses and says what the model is, and a usage snippet that runs."""

import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from videoar_hf.testing_utils import tiny_pipeline

CARDS = sorted((Path(__file__).parents[1] / "model_cards").glob("*.md"))
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
FROM_PRETRAINED = re.compile(r"VideoARPipeline\.from_pretrained\([^)]*\)+")


def test_there_is_a_card_for_the_shipped_model_and_each_paper_preset():
    assert {p.stem for p in CARDS} >= {"videoar-shapes", "videoar-l", "videoar-xl", "videoar-4b"}


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: p.stem)
def test_card_metadata(card_path):
    card = ModelCard.load(card_path)
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "text-to-video"
    assert data["library_name"] == "videoar-hf", "diffusers' Hub snippet would show a loader that cannot load it"
    assert data["license"] == "apache-2.0"
    for field in ("tags", "datasets", "base_model"):
        assert isinstance(data.get(field), list) and data[field], f"{field} is missing"
    assert "videoar" in data["tags"]
    assert "VideoARPipeline.from_pretrained" in card.text


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cards") / "tiny"
    tiny_pipeline(scale_schedule=(1, 2, 4, 8, 16), sample_size=128).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: p.stem)
def test_card_usage_snippet_runs(card_path, tiny_folder):
    snippet = PYTHON_BLOCK.search(card_path.read_text()).group(1)
    assert FROM_PRETRAINED.search(snippet), "the first python block must load the pipeline"
    snippet = FROM_PRETRAINED.sub(f"VideoARPipeline.from_pretrained({str(tiny_folder)!r})", snippet)
    namespace = {}
    exec(compile(snippet, str(card_path), "exec"), namespace)
    video = namespace["video"]
    assert video.ndim == 4 and video.shape[-1] == 3 and video.shape[0] == 17
