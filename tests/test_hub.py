"""Publishing: push_to_hub through an injected fake HfApi, then loading the repo back from an offline Hub cache."""

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from videoar_hf import VideoARPipeline
from videoar_hf.testing_utils import offline_hub_repo, tiny_lora_adapter


class FakeHfApi:
    """Records the calls a push makes and keeps a copy of each uploaded folder, as the Hub would."""

    def __init__(self, user="me"):
        self.user, self.calls, self.uploads = user, [], {}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"{self.user}/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        self.uploads[repo_id] = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        self.remote = Path(self.scratch) / repo_id.replace("/", "--")
        shutil.copytree(folder_path, self.remote)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0")


def generate(pipe, seed=0):
    return pipe("a red circle moving left", num_frames=9, generator=torch.Generator().manual_seed(seed)).frames


@pytest.fixture
def api(tmp_path):
    api = FakeHfApi()
    api.scratch = tmp_path / "remote"
    return api


def test_push_to_hub_uploads_the_pipeline_and_a_card_in_one_commit(tiny_pipe, api, tmp_path, monkeypatch):
    tiny_pipe.push_to_hub("org/videoar-tiny", private=True, commit_message="first", api=api)
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][2]["private"] is True and api.calls[0][2]["exist_ok"] is True
    assert api.calls[1][2]["commit_message"] == "first"
    files = api.uploads["org/videoar-tiny"]
    assert "README.md" in files and "model_index.json" in files
    assert {"transformer/model.safetensors", "video_tokenizer/diffusion_pytorch_model.safetensors"} <= set(files)
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    card = ModelCard.load(api.remote / "README.md")
    assert card.data.pipeline_tag == "text-to-video" and card.data.library_name == "videoar-hf"
    assert 'VideoARPipeline.from_pretrained("org/videoar-tiny")' in card.text

    # the uploaded folder, laid out as the Hub cache, loads back into an identical pipeline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "cache"
    offline_hub_repo(cache, "org/videoar-tiny", lambda snapshot: shutil.copytree(api.remote, snapshot))
    reloaded = VideoARPipeline.from_pretrained("org/videoar-tiny", cache_dir=cache)
    reloaded.set_progress_bar_config(disable=True)
    for name in ("transformer", "video_tokenizer", "text_encoder"):
        original = getattr(tiny_pipe, name).state_dict()
        assert all(torch.equal(v, original[k]) for k, v in getattr(reloaded, name).state_dict().items()), name
    np.testing.assert_array_equal(generate(reloaded), generate(tiny_pipe))


def test_save_pretrained_push_to_hub_keeps_the_folder_and_takes_its_name(tiny_pipe, api, tmp_path):
    card = "---\nlicense: mit\npipeline_tag: text-to-video\nlibrary_name: videoar-hf\n---\n# Mine\n"
    tiny_pipe.save_pretrained(tmp_path / "my-model", push_to_hub=True, model_card=card, api=api)
    assert api.calls[0][1] == "my-model" and "me/my-model" in api.uploads
    assert (tmp_path / "my-model" / "model_index.json").is_file()
    assert ModelCard.load(api.remote / "README.md").data.license == "mit"


def test_push_refuses_an_unfused_lora_and_bad_repo_ids(tiny_pipe, api, tmp_path):
    with pytest.raises(ValueError, match="repo_id"):
        tiny_pipe.push_to_hub("a/b/c", api=api)
    tiny_pipe.load_lora_weights(tiny_lora_adapter(tiny_pipe.transformer, tmp_path / "adapter"), adapter_name="x")
    with pytest.raises(ValueError, match="fuse_lora"):
        tiny_pipe.push_to_hub("org/with-lora", api=api)
    assert api.calls == []


def test_a_model_card_that_is_neither_a_file_nor_card_text(tiny_pipe, api):
    with pytest.raises(ValueError, match="model_card"):
        tiny_pipe.push_to_hub("org/x", model_card="just some words", api=api)
    assert api.calls == []
