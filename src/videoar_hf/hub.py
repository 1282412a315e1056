"""Publishing a saved pipeline folder to the Hub: one repo, one commit, with a model card."""

import os
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData

CARD_FILE = "README.md"


def default_model_card(repo_id: str) -> ModelCard:
    """A card with the metadata the Hub needs and a usage snippet that loads `repo_id`; edit it on the Hub after."""
    data = ModelCardData(
        license="apache-2.0",
        pipeline_tag="text-to-video",
        # diffusers' Hub snippet (DiffusionPipeline.from_pretrained) cannot load this pipeline: name our library
        library_name="videoar-hf",
        tags=["videoar", "autoregressive", "text-to-video", "next-scale-prediction"],
    )
    content = f"""---
{data.to_yaml()}
---

# {repo_id.split("/")[-1]}

A [VideoAR](https://arxiv.org/abs/2601.05966) text-to-video pipeline, made with `videoar-hf`
(`pip install videoar-hf`).

```python
from videoar_hf import VideoARPipeline

pipe = VideoARPipeline.from_pretrained("{repo_id}")
video = pipe("a red circle moving left", num_frames=17).frames[0]
```

diffusers' generic loader works too. `trust_remote_code=True` runs the repo's `pipeline.py`, whose only code is
`from videoar_hf import VideoARPipeline`; the model code is the installed package:

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)
```
"""
    return ModelCard(content)


def upload_pipeline_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    model_card: str | os.PathLike | ModelCard | None = None,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    create_pr: bool = False,
    api: HfApi | None = None,
) -> CommitInfo:
    """Create `repo_id` if needed and upload `folder` as one commit.

    The card: `model_card` (a `ModelCard`, a path to one, or its text) is written as `README.md`; without it a card
    already in the folder is kept, or `default_model_card` is written. `api` defaults to `HfApi(token=token)`.
    """
    if not isinstance(repo_id, str) or repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise ValueError(f"`repo_id` must be 'name' or 'org/name', got {repo_id!r}.")
    folder = Path(folder)
    if model_card is not None:
        card = model_card if isinstance(model_card, ModelCard) else _load_card(model_card)
        card.save(folder / CARD_FILE)
    elif not (folder / CARD_FILE).is_file():
        default_model_card(repo_id).save(folder / CARD_FILE)
    api = api or HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id  # adds the user
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message or "Upload VideoARPipeline",
        create_pr=create_pr,
        repo_type="model",
    )


def _load_card(card: str | os.PathLike) -> ModelCard:
    if os.path.isfile(card):
        return ModelCard.load(card)
    if isinstance(card, str) and card.lstrip().startswith("---"):
        return ModelCard(card)
    raise ValueError(
        f"`model_card` must be a ModelCard, a card file or a card's text (starting with ---), got {card!r}."
    )
