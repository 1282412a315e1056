"""Every card in model_cards/: Hub metadata that parses and says what the model is, and a usage snippet that runs."""

import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from videoar_hf.testing_utils import tiny_pipeline

CARDS = sorted((Path(__file__).parents[1] / "model_cards").glob("*.md"))
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
FROM_PRETRAINED = re.compile(r"VideoARPipeline\.from_pretrained\([^)]*\)+")
DIFFUSION_FROM_PRETRAINED = re.compile(r"DiffusionPipeline\.from_pretrained\(.*\)")  # to the line's last ")"


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


@pytest.mark.parametrize("card_path", [p for p in CARDS if DIFFUSION_FROM_PRETRAINED.search(p.read_text())],
                         ids=lambda p: p.stem)  # fmt: skip
def test_card_diffusion_pipeline_snippet_runs(card_path, tiny_folder):
    snippet = next(b for b in PYTHON_BLOCK.findall(card_path.read_text()) if DIFFUSION_FROM_PRETRAINED.search(b))
    snippet = DIFFUSION_FROM_PRETRAINED.sub(
        f"DiffusionPipeline.from_pretrained({str(tiny_folder)!r}, trust_remote_code=True)", snippet
    )
    namespace = {}
    exec(compile(snippet, str(card_path), "exec"), namespace)
    assert type(namespace["pipe"]).__name__ == "VideoARPipeline"
    if "video" in namespace:
        assert namespace["video"].shape[0] == 17


def test_the_default_hub_card_snippets_run(tiny_folder):
    from videoar_hf.hub import default_model_card

    text = default_model_card("org/name").text
    blocks = PYTHON_BLOCK.findall(text)
    assert len(blocks) == 2
    for block in blocks:
        block = FROM_PRETRAINED.sub(f"VideoARPipeline.from_pretrained({str(tiny_folder)!r})", block)
        block = DIFFUSION_FROM_PRETRAINED.sub(
            f"DiffusionPipeline.from_pretrained({str(tiny_folder)!r}, trust_remote_code=True)", block
        )
        namespace = {}
        exec(compile(block, "default card", "exec"), namespace)
        assert type(namespace["pipe"]).__name__ == "VideoARPipeline"
