"""The threat model in one place: what a stranger's adapter, folder or argument may try, and what it gets.

Every case must be answered cleanly: a clear error of the expected type that names the parameter or file, no
change to the pipeline (the same seed gives bit-identical output after the failed call), and no hang.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch
from peft import LoraConfig

from videoar_hf.testing_utils import tiny_lora_adapter

PROMPT = "a red circle moving left"


def frames(pipe, seed=0, **kwargs):
    return pipe(PROMPT, num_frames=5, generator=torch.Generator().manual_seed(seed), **kwargs).frames


def weights(pipe):
    return {k: v.clone() for k, v in pipe.transformer.state_dict().items()}


def assert_same_weights(pipe, before):
    after = pipe.transformer.state_dict()
    assert list(after) == list(before), "the transformer's modules changed"
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed"


# ------------------------------------------------------------------ 1. adapters never change the base model


def _non_default(field: dataclasses.Field, default):
    """A value other than peft's default for `field`, of a plausible type."""
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 3
    if isinstance(default, float):
        return default + 0.5
    if isinstance(default, dict):
        return {"layers.0.self_attn.q_proj": 2}
    if isinstance(default, str):
        return "lora_only" if field.name == "bias" else "something-else"
    return {
        "modules_to_save": ["bit_head"], "layer_replication": [[0, 2], [0, 2]], "target_parameters": ["start_token"],
        "trainable_token_indices": [0, 1], "layers_to_transform": [0], "layers_pattern": "layers",
        "exclude_modules": ["o_proj"], "target_modules": ["q_proj"],
    }.get(field.name, {"x": 1})  # fmt: skip


def lora_fields():
    defaults = LoraConfig()
    for field in dataclasses.fields(LoraConfig):
        if field.name in ("peft_type", "runtime_config"):
            continue  # the type is checked on its own; the runtime config is not saved
        yield field.name, _non_default(field, getattr(defaults, field.name))


def adapter_with(tmp_path, tiny_pipe, **config_fields):
    folder = tiny_lora_adapter(tiny_pipe.transformer, tmp_path / "adapter", seed=3)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **config_fields}))
    return folder


@pytest.mark.parametrize("field, value", list(lora_fields()), ids=[name for name, _ in lora_fields()])
def test_every_adapter_field_leaves_the_base_bit_identical(tiny_pipe, tmp_path, field, value):
    before, video = weights(tiny_pipe), frames(tiny_pipe)
    folder = adapter_with(tmp_path, tiny_pipe, **{field: value})
    try:
        tiny_pipe.load_lora_weights(folder, adapter_name="hostile")
    except ValueError as error:
        assert field in str(error) or str(folder) in str(error), error
    else:
        tiny_pipe.unload_lora_weights()
    assert_same_weights(tiny_pipe, before)
    np.testing.assert_array_equal(frames(tiny_pipe), video)


@pytest.mark.parametrize(
    "field, value",
    [("init_lora_weights", "pissa"), ("init_lora_weights", "olora"), ("init_lora_weights", "loftq"),
     ("modules_to_save", ["bit_head"]), ("layer_replication", [[0, 2], [0, 2]]), ("bias", "all"), ("use_dora", True)],
)  # fmt: skip
def test_base_rewriting_adapters_are_refused_by_name(tiny_pipe, tmp_path, field, value):
    before = weights(tiny_pipe)
    with pytest.raises(ValueError, match=f"`{field}`"):
        tiny_pipe.load_lora_weights(adapter_with(tmp_path, tiny_pipe, **{field: value}))
    assert_same_weights(tiny_pipe, before)
    assert tiny_pipe.get_list_adapters() == {}


# ------------------------------------------------------------------ 2. adapters cannot hang loading


@pytest.mark.timeout(60)
@pytest.mark.parametrize("field", ["target_modules", "exclude_modules", "layers_pattern", "rank_pattern"])
def test_catastrophic_regexes_are_refused_at_once(tiny_pipe, tmp_path, field):
    evil = "([a-z0-9_.]|[a-z0-9_.])*Z"
    value = {evil: 2} if field == "rank_pattern" else evil
    before = weights(tiny_pipe)
    with pytest.raises(ValueError, match=f"`{field}"):
        tiny_pipe.load_lora_weights(adapter_with(tmp_path, tiny_pipe, **{field: value}))
    assert_same_weights(tiny_pipe, before)


def test_plain_name_patterns_still_load(tiny_pipe, tmp_path):
    names = [f"layers.{i}.{m}" for i in range(2) for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj")]
    folder = adapter_with(tmp_path, tiny_pipe, target_modules="|".join(names))  # peft: a full match of one name
    tiny_pipe.load_lora_weights(folder, adapter_name="x")
    assert tiny_pipe.get_list_adapters() == {"transformer": ["x"]}
