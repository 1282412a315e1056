"""What a pipeline folder must hold before `VideoARPipeline.from_pretrained` reads a byte of weights, and what the
loaded components must match after.

A folder from a stranger may name any class in `model_index.json`, drop a pickle beside the weights, or leave files
out. Before loading: every slot names a class of the kind it must hold, from transformers or this package; no slot
holds a file in a pickle format; each model slot has readable safetensors and the tokenizer slot its vocabulary.
After loading: each model's weights match its file key for key, so nothing is silently left at random.
"""

import importlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PreTrainedModel, PreTrainedTokenizerBase

# formats that are read with pickle (or may be), refused in every slot
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".h5", ".msgpack", ".npz", ".npy")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model")
LIBRARIES = ("transformers", "videoar_hf")  # the only modules a slot's class may come from
INDEX_FIELDS = ("_class_name", "_diffusers_version", "_name_or_path")
MAX_KEYS_SHOWN = 5


def safetensors_only(kwargs: dict) -> dict:
    """`from_pretrained` keyword arguments that never fall back to a pickle-format file: `use_safetensors=True`."""
    if kwargs.get("use_safetensors") not in (None, True):  # None: the caller left it to us
        raise ValueError("`use_safetensors` must be True: VideoAR loads weights from safetensors only.")
    return {**kwargs, "use_safetensors": True}


def pipeline_slots() -> dict[str, type]:
    """The kind of object each slot must hold."""
    from .modeling_tokenizer import VideoARTokenizer
    from .modeling_videoar import VideoARTransformer

    return {
        "video_tokenizer": VideoARTokenizer,
        "transformer": VideoARTransformer,
        "text_encoder": PreTrainedModel,
        "tokenizer": PreTrainedTokenizerBase,
    }


def check_pipeline_folder(folder: str | Path, variant: str | None = None) -> None:
    """Raise a `ValueError` naming the slot and file when `folder` is not a loadable, pickle-free pipeline folder."""
    folder = Path(folder)
    index = _read_index(folder)
    slots = pipeline_slots()
    unknown = sorted(set(index) - set(slots) - set(INDEX_FIELDS))
    if unknown:
        raise ValueError(f"{folder / 'model_index.json'} names components this pipeline does not have: {unknown}.")
    for slot, kind in slots.items():
        spec = index.get(slot)
        if spec in ([None, None], None) and slot in ("text_encoder", "tokenizer"):
            continue  # a pipeline may be saved without its text components (pass `prompt_embeds` then)
        _check_class(folder, slot, spec, kind)
        path = folder / slot
        if not path.is_dir():
            raise ValueError(f"Component `{slot}` is missing: {path} is not a folder.")
        pickles = sorted(p for p in path.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(
                f"Component `{slot}` holds {pickles[0]}, a pickle-format file; VideoAR loads safetensors only. "
                "Remove it (or convert it to safetensors)."
            )
        if kind is PreTrainedTokenizerBase:
            if not any((path / name).is_file() for name in TOKENIZER_FILES):
                raise ValueError(f"Component `tokenizer` has no vocabulary in {path}: expected one of {list(TOKENIZER_FILES)}.")
        else:
            for weights in _weight_files(path, slot, variant):
                _read_keys(weights)


def check_loaded_weights(pipe, folder: str | Path, variant: str | None = None, skip: tuple[str, ...] = ()) -> None:
    """Each model component loaded from `folder` holds exactly the tensors of its safetensors files."""
    for slot in ("video_tokenizer", "transformer", "text_encoder"):
        model = getattr(pipe, slot, None)
        if slot in skip or not isinstance(model, torch.nn.Module):
            continue
        in_files = set().union(*(_read_keys(p) for p in _weight_files(Path(folder) / slot, slot, variant)))
        tied = set(getattr(model, "all_tied_weights_keys", None) or {})
        expected = set(model.state_dict()) - tied
        missing, unexpected = sorted(expected - in_files), sorted(in_files - expected - tied)
        for what, keys in (("is missing", missing), ("has unexpected", unexpected)):
            if keys:
                shown = ", ".join(keys[:MAX_KEYS_SHOWN]) + (f" and {len(keys) - MAX_KEYS_SHOWN} more" if len(keys) > MAX_KEYS_SHOWN else "")
                raise ValueError(f"Component `{slot}` {what} weights in {Path(folder) / slot}: {shown}.")


def _read_index(folder: Path) -> dict:
    path = folder / "model_index.json"
    if not path.is_file():
        raise ValueError(f"{str(folder)!r} is not a VideoAR pipeline folder: it has no `model_index.json`.")
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(index, dict):
        raise ValueError(f"{path} must hold a JSON object of components, got {type(index).__name__}.")
    return index


def _check_class(folder: Path, slot: str, spec, kind: type) -> None:
    where = f"`{slot}` in {folder / 'model_index.json'}"
    if not (isinstance(spec, list) and len(spec) == 2 and all(isinstance(x, str) for x in spec)):
        raise ValueError(f"{where} must be [library, class name], got {spec!r}.")
    library, class_name = spec
    if library.split(".")[0] not in LIBRARIES:
        raise ValueError(f"{where} names the library {library!r}; allowed: {list(LIBRARIES)}.")
    try:
        cls = getattr(importlib.import_module(library), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{where} names {library}.{class_name}, which does not exist: {error}") from error
    if not (isinstance(cls, type) and issubclass(cls, kind)):
        raise ValueError(f"{where} names {library}.{class_name}, but the slot must hold a {kind.__name__}.")


def _weight_files(path: Path, slot: str, variant: str | None) -> list[Path]:
    files = sorted(path.glob("*.safetensors"))
    # `model.safetensors`, `model-00001-of-00002.safetensors`; with a variant `model.fp16.safetensors`, ...
    files = [p for p in files if f".{variant}" in p.name] if variant else [p for p in files if p.name.count(".") == 1]
    if not files:
        wanted = f"`*.{variant}.safetensors`" if variant else "`*.safetensors`"
        raise ValueError(f"Missing weights for `{slot}`: no {wanted} file in {path}.")
    return files


def _read_keys(path: Path) -> set[str]:
    try:
        with safe_open(path, framework="pt") as f:
            return set(f.keys())
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"Corrupt weight file {path}: {error}") from error
