"""LoRA adapters on the pipeline's transformer, built on diffusers' `LoraBaseMixin` (as Wan's loader is).

Two file formats load, both safetensors only:
- diffusers' single file, `pytorch_lora_weights.safetensors` with keys `transformer.<module>.lora_{A,B}.weight` and
  the `LoraConfig` in its header, as `save_lora_weights` writes it;
- the standard PEFT folder, `adapter_config.json` + `adapter_model.safetensors` with keys
  `base_model.model.<module>.lora_{A,B}.weight`, as `save_lora_adapter` and `peft` write it.

diffusers' base class drives a transformers model as it drives a text encoder; what it cannot do for this one is
written here: loading (`load_lora_into_transformer`, since `load_lora_adapter` is a diffusers-model method), fusing
with the scale restored on unfuse, and deleting or unloading down to the plain linear layers. Every method that
rejects its input leaves the pipeline exactly as it was.
"""

import dataclasses
import json
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY, LoraBaseMixin, _pack_dict_with_prefix
from diffusers.utils import logging
from diffusers.utils.peft_utils import delete_adapter_layers, set_weights_and_activate_adapters
from huggingface_hub import snapshot_download
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils import CONFIG_NAME as ADAPTER_CONFIG_NAME
from peft.utils import SAFETENSORS_WEIGHTS_NAME as ADAPTER_WEIGHTS_NAME
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .atomic_directory import atomic_directory
from .pipeline_inputs import is_finite_number

logger = logging.get_logger(__name__)

PEFT_KEY_PREFIX = "base_model.model."
TRANSFORMER = "transformer"
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<matrix>[AB])\.weight$")


class VideoARLoraLoaderMixin(LoraBaseMixin):
    """`load_lora_weights`, `set_adapters`, `fuse_lora`, ... for `VideoARPipeline`, on diffusers' `LoraBaseMixin`.

    Adapters live on `self.transformer`. The last loaded adapter is the active one until `set_adapters` says
    otherwise. `get_list_adapters()` returns `{"transformer": [names]}`, as in diffusers.
    """

    _lora_loadable_modules = [TRANSFORMER]
    transformer_name = TRANSFORMER

    # ------------------------------------------------------------------ reading adapters

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict, **kwargs):
        """The adapter's weights with `transformer.`-prefixed keys, and with `return_lora_metadata=True` also its
        `LoraConfig` fields (`transformer.`-prefixed, `None` when the file has none).

        Takes a state dict, a `.safetensors` file, a folder (diffusers' single file or a PEFT folder) or a Hub repo id
        (`cache_dir`, `revision`, `token`, `local_files_only`, `subfolder`, `weight_name` apply).
        """
        return_lora_metadata = kwargs.pop("return_lora_metadata", False)
        source = pretrained_model_name_or_path_or_dict
        if isinstance(source, dict):
            state_dict, metadata = dict(source), None
        else:
            state_dict, metadata = _read_lora_files(_lora_location(str(source), **kwargs), kwargs.get("weight_name"))
        if any(key.startswith(PEFT_KEY_PREFIX) for key in state_dict):  # the PEFT layout: one component, ours
            state_dict = {f"{TRANSFORMER}.{key.removeprefix(PEFT_KEY_PREFIX)}": v for key, v in state_dict.items()}
        return (state_dict, metadata) if return_lora_metadata else state_dict

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name: str | None = None,
                          hotswap: bool = False, **kwargs) -> None:  # fmt: skip
        """Load a LoRA adapter into the transformer and make it the active one.

        Args:
            pretrained_model_name_or_path_or_dict: see `lora_state_dict`.
            adapter_name: a new name for it; `default_{i}` by default. With `hotswap=True`, the name of a loaded
                adapter whose weights are replaced in place (same targets, ranks up to its own).
        """
        self._refuse_while_fused("load_lora_weights")
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", False)
        state_dict, metadata = self.lora_state_dict(pretrained_model_name_or_path_or_dict, return_lora_metadata=True,
                                                    **kwargs)  # fmt: skip
        prepare_hotswap = getattr(self, "_prepare_lora_hotswap_kwargs", None)
        adapter_name = self.load_lora_into_transformer(
            state_dict, self.transformer, adapter_name=adapter_name, metadata=metadata, _pipeline=self,
            low_cpu_mem_usage=low_cpu_mem_usage, hotswap=hotswap,
            source=pretrained_model_name_or_path_or_dict if not isinstance(pretrained_model_name_or_path_or_dict, dict)
            else "state dict",
        )  # fmt: skip
        if adapter_name is not None and not hotswap:
            set_weights_and_activate_adapters(self.transformer, [adapter_name], [1.0])
            if prepare_hotswap:  # pad this first adapter to the target rank, so later hotswaps never recompile
                from peft.utils.hotswap import prepare_model_for_compiled_hotswap

                prepare_model_for_compiled_hotswap(self.transformer, config=self.transformer.peft_config,
                                                   **prepare_hotswap)  # fmt: skip
                self._prepare_lora_hotswap_kwargs = None

    def enable_lora_hotswap(self, target_rank: int = 128, check_compiled: str = "error") -> None:
        """Let later `load_lora_weights(..., hotswap=True)` swap in adapters of other ranks (up to `target_rank`)
        without recompiling a `torch.compile`d transformer; call it before loading the first adapter, as in
        diffusers. `check_compiled` ("error", "warn", "ignore") says what to do if an adapter is already loaded."""
        if check_compiled not in ("error", "warn", "ignore"):
            raise ValueError(f"`check_compiled` must be 'error', 'warn' or 'ignore', got {check_compiled!r}.")
        if not isinstance(target_rank, int) or isinstance(target_rank, bool) or target_rank < 1:
            raise ValueError(f"`target_rank` must be a positive integer, got {target_rank!r}.")
        if self._adapter_names() and check_compiled == "error":
            raise ValueError("Call `enable_lora_hotswap` before loading the first adapter.")
        if self._adapter_names() and check_compiled == "warn":
            logger.warning("`enable_lora_hotswap` after an adapter is loaded: a compiled model may recompile.")
        self._prepare_lora_hotswap_kwargs = {"target_rank": target_rank, "check_compiled": check_compiled}

    @classmethod
    def load_lora_into_transformer(cls, state_dict, transformer, adapter_name=None, metadata=None, _pipeline=None,
                                   low_cpu_mem_usage=False, hotswap=False, source="state dict") -> str | None:  # fmt: skip
        """Inject the `transformer.` part of `state_dict` into `transformer` as `adapter_name`; return that name
        (`None` when the state dict holds nothing for the transformer, which is logged and changes nothing)."""
        prefix = f"{TRANSFORMER}."
        weights = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
        if not weights:
            logger.warning(f"No LoRA keys associated to {type(transformer).__name__} found with the prefix={TRANSFORMER!r}; "
                           "nothing was loaded.")  # fmt: skip
            return None
        config = _lora_config(weights, metadata, source)
        _check_adapter_fits(transformer, config, weights, source)
        loaded = list(getattr(transformer, "peft_config", {}))
        if hotswap:
            return _hotswap(transformer, adapter_name, config, weights, loaded, source)
        adapter_name = adapter_name or f"default_{len(loaded)}"
        if adapter_name in loaded:
            raise ValueError(f"`adapter_name` {adapter_name!r} is already loaded; pick a new name or `delete_adapters` it first.")
        try:
            with warnings.catch_warnings():  # peft warns on every second adapter, which is what we want
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
                inject_adapter_in_model(config, transformer, adapter_name=adapter_name, low_cpu_mem_usage=low_cpu_mem_usage)
            result = set_peft_model_state_dict(transformer, weights, adapter_name=adapter_name,
                                               low_cpu_mem_usage=low_cpu_mem_usage)  # fmt: skip
            if result.unexpected_keys:
                raise ValueError(f"the transformer has no place for {result.unexpected_keys[:3]}")
        except Exception as error:
            _remove_adapter(transformer, adapter_name)
            raise ValueError(f"LoRA adapter {source} does not fit the transformer: {error}") from error
        return adapter_name

    # ------------------------------------------------------------------ saving adapters

    @classmethod
    def save_lora_weights(cls, save_directory: str | os.PathLike, transformer_lora_layers=None,
                          is_main_process: bool = True, weight_name: str | None = None, save_function=None,
                          safe_serialization: bool = True, transformer_lora_adapter_metadata: dict | None = None) -> None:  # fmt: skip
        """Write `transformer_lora_layers` (a LoRA state dict, e.g. `get_peft_model_state_dict(pipe.transformer)`)
        in diffusers' single-file format, with its `LoraConfig` fields in the header; the file is replaced atomically.
        """
        if not safe_serialization or save_function is not None:
            raise ValueError("LoRA weights are saved as safetensors only: `safe_serialization=False` and "
                             "`save_function` are not supported.")  # fmt: skip
        if not transformer_lora_layers:
            raise ValueError("Pass `transformer_lora_layers`, the LoRA state dict to save.")
        if not is_main_process:
            return
        layers = transformer_lora_layers.state_dict() if isinstance(transformer_lora_layers, torch.nn.Module) else transformer_lora_layers
        tensors = {k: v.detach().contiguous().cpu() for k, v in _pack_dict_with_prefix(layers, TRANSFORMER).items()}
        header = {"format": "pt"}
        if transformer_lora_adapter_metadata:
            fields = {k: sorted(v) if isinstance(v, set) else v for k, v in transformer_lora_adapter_metadata.items()}
            header[LORA_ADAPTER_METADATA_KEY] = json.dumps(_pack_dict_with_prefix(fields, TRANSFORMER), indent=2,
                                                           sort_keys=True, default=str)  # fmt: skip
        path = Path(save_directory) / (weight_name or DIFFUSERS_WEIGHT_NAME)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)

    def save_lora_adapter(self, save_directory: str | os.PathLike, adapter_name: str | None = None) -> None:
        """Write one adapter (the active one by default) as a standard PEFT folder, atomically: what
        `peft.PeftModel.from_pretrained(transformer, folder)` and `load_lora_weights` read."""
        names = self._adapter_names()
        if adapter_name is None:
            if len(self.get_active_adapters()) != 1:
                raise ValueError(f"Pass `adapter_name`: the active adapters are {self.get_active_adapters()}.")
            adapter_name = self.get_active_adapters()[0]
        if adapter_name not in names:
            raise ValueError(f"Unknown adapter {adapter_name!r}; loaded adapters: {names}.")
        state_dict = get_peft_model_state_dict(self.transformer, adapter_name=adapter_name)
        with atomic_directory(save_directory) as tmp:
            self.transformer.peft_config[adapter_name].save_pretrained(tmp)
            tensors = {PEFT_KEY_PREFIX + k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
            save_file(tensors, Path(tmp) / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})

    # ------------------------------------------------------------------ choosing and combining adapters

    def set_adapters(self, adapter_names: str | list[str], adapter_weights=None) -> None:
        """Activate `adapter_names`, each scaled by its weight (1 by default; a number, a list, or diffusers'
        per-component dicts); their updates add up."""
        self._refuse_while_fused("set_adapters")
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        unknown = [name for name in names if name not in self._adapter_names()]
        if unknown or not names:  # diffusers' wording, which its own tests and users' code match on
            raise ValueError(f"Adapter name(s) {unknown or names} not in the list of present adapters: "
                             f"{self._adapter_names()}.")  # fmt: skip
        weights = adapter_weights if isinstance(adapter_weights, list) else [adapter_weights] * len(names)
        scalars = [w.get(TRANSFORMER, 1.0) if isinstance(w, dict) else w for w in weights]
        if len(weights) != len(names) or not all(w is None or is_finite_number(w) for w in scalars):
            raise ValueError(f"`adapter_weights` needs one finite number per adapter in {names}, got {adapter_weights!r}.")
        super().set_adapters(names, adapter_weights)

    def delete_adapters(self, adapter_names: str | list[str]) -> None:
        """Remove adapters entirely; the others stay active at their weights."""
        self._refuse_while_fused("delete_adapters")
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        unknown = [name for name in names if name not in self._adapter_names()]
        if unknown:
            raise ValueError(f"Unknown adapter(s) {unknown} in `adapter_names`; loaded: {self._adapter_names()}.")
        remaining = [name for name in self.get_active_adapters() if name not in names]
        for name in names:
            _remove_adapter(self.transformer, name)
        for _, layer in _lora_layers(self.transformer):
            layer.set_adapter(remaining)

    def get_active_adapters(self) -> list[str]:
        layers = _lora_layers(self.transformer)
        return [name for name in layers[0][1].active_adapters if name in self._adapter_names()] if layers else []

    # ------------------------------------------------------------------ fusing and unloading

    def fuse_lora(self, components: list[str] = [TRANSFORMER], lora_scale: float = 1.0, safe_fusing: bool = False,
                  adapter_names: list[str] | None = None, **kwargs) -> None:  # fmt: skip
        """Add the active adapters (or `adapter_names`), at their `set_adapters` weights times `lora_scale`, into the
        transformer's weights, so generation runs at the base model's speed. `unfuse_lora` takes them out again and
        restores the scales; after `unload_lora_weights` they stay, and `save_pretrained` saves the fused weights."""
        if list(components) != [TRANSFORMER]:
            raise ValueError(f"`components` must be {[TRANSFORMER]}: LoRA lives on the transformer, got {components!r}.")
        if not is_finite_number(lora_scale):
            raise ValueError(f"`lora_scale` must be a finite number, got {lora_scale!r}.")
        fused = self.get_active_adapters() if adapter_names is None else list(adapter_names)
        if not fused or any(name not in self._adapter_names() for name in fused):
            raise ValueError(f"No such LoRA adapter to fuse: {fused}; loaded: {self._adapter_names()}.")
        self._refuse_while_fused("fuse_lora")
        self._scaling_before_fuse = {}
        for name, layer in _lora_layers(self.transformer):
            present = [a for a in fused if a in layer.lora_A]
            self._scaling_before_fuse[name] = dict(layer.scaling)
            for adapter in present:
                layer.scaling[adapter] *= lora_scale
            layer.merge(safe_merge=safe_fusing, adapter_names=present)
        self._merged_adapters = self._merged_adapters | set(fused)

    def unfuse_lora(self, components: list[str] = [TRANSFORMER], **kwargs) -> None:
        """Take fused adapters back out of the weights (exactly, up to float rounding)."""
        if not self._is_fused():
            logger.warning("`unfuse_lora`: no LoRA is fused; nothing to do.")
            return
        for name, layer in _lora_layers(self.transformer):
            layer.unmerge()
            layer.scaling.update(self._scaling_before_fuse[name])
        self._merged_adapters = set()

    def unload_lora_weights(self) -> None:
        """Remove every adapter. Fused adapters stay in the weights (as in diffusers); unfused ones are gone."""
        _put_back_base_layers(self.transformer, _lora_layers(self.transformer))
        if hasattr(self.transformer, "peft_config"):
            del self.transformer.peft_config
        self.transformer._hf_peft_config_loaded = False
        self._merged_adapters = set()

    # ------------------------------------------------------------------ helpers

    def _adapter_names(self) -> list[str]:
        return list(getattr(self.transformer, "peft_config", {}))

    def _is_fused(self) -> bool:
        return any(layer.merged for _, layer in _lora_layers(self.transformer))

    def _refuse_while_fused(self, method: str) -> None:
        # a merged peft layer ignores every unmerged adapter, so changing adapters now would silently do nothing
        if self._is_fused():
            raise ValueError(f"`{method}` while a LoRA is fused: call `unfuse_lora()` (or `unload_lora_weights()`) first.")

    @contextmanager
    def _lora_scale(self, scale: float):
        """Every LoRA update times `scale` for the duration (`attention_kwargs={"scale": ...}`); the scales are
        restored exactly afterwards, `set_adapters` weights included."""
        layers = _lora_layers(self.transformer) if self._adapter_names() else []
        saved = [dict(layer.scaling) for _, layer in layers]
        for _, layer in layers:
            layer.scale_layer(scale)
        try:
            yield
        finally:
            for (_, layer), scaling in zip(layers, saved):
                layer.scaling.update(scaling)

    @contextmanager
    def _lora_layers_detached(self):
        """The plain modules in place of the LoRA layers for the duration: a fused model saves as a plain one."""
        swapped = _put_back_base_layers(self.transformer, _lora_layers(self.transformer))
        try:
            yield
        finally:
            for parent, child, layer in swapped:
                setattr(parent, child, layer)

    def _check_savable(self) -> None:
        if self._adapter_names() and not all(layer.merged for _, layer in _lora_layers(self.transformer)):
            raise ValueError(
                f"The transformer carries unfused LoRA adapter(s) {self._adapter_names()}. Save the adapter with "
                "`save_lora_adapter(folder)`, or bake it in with `fuse_lora()` and then save the pipeline."
            )


def _lora_layers(transformer: torch.nn.Module) -> list[tuple[str, BaseTunerLayer]]:
    return [(n, m) for n, m in transformer.named_modules() if isinstance(m, BaseTunerLayer)]


def _remove_adapter(transformer: torch.nn.Module, adapter_name: str) -> None:
    if adapter_name in getattr(transformer, "peft_config", {}):
        delete_adapter_layers(transformer, adapter_name)  # drops `peft_config` itself with the last adapter
        getattr(transformer, "peft_config", {}).pop(adapter_name, None)
    _put_back_base_layers(transformer, [(n, m) for n, m in _lora_layers(transformer) if not m.lora_A])  # left bare
    if not getattr(transformer, "peft_config", None) and hasattr(transformer, "peft_config"):
        del transformer.peft_config


def _put_back_base_layers(transformer, layers) -> list[tuple[torch.nn.Module, str, BaseTunerLayer]]:
    """Replace each LoRA layer by the linear layer it wraps; return what to restore."""
    swapped = []
    for name, layer in layers:
        parent_name, _, child = name.rpartition(".")
        parent = transformer.get_submodule(parent_name)
        setattr(parent, child, layer.get_base_layer())
        swapped.append((parent, child, layer))
    return swapped


def _hotswap(transformer, adapter_name, config, weights, loaded, source) -> str:
    from peft.utils.hotswap import check_hotswap_configs_compatible, hotswap_adapter_from_state_dict

    if adapter_name not in loaded:
        raise ValueError(f"`hotswap=True` replaces a loaded adapter; `adapter_name` {adapter_name!r} is not one of {loaded}.")
    check_hotswap_configs_compatible(transformer.peft_config[adapter_name], config)
    named = {re.sub(r"\.lora_([AB])\.weight$", rf".lora_\1.{adapter_name}.weight", k): v for k, v in weights.items()}
    try:
        hotswap_adapter_from_state_dict(transformer, named, adapter_name=adapter_name, config=config)
    except Exception as error:
        raise ValueError(f"LoRA adapter {source} cannot replace {adapter_name!r}: {error}") from error
    return adapter_name


def _lora_location(path_or_repo_id: str, subfolder: str | None = None, **hub_kwargs) -> Path:
    """A local file or folder, or a snapshot of a Hub repo's json and safetensors files (offline cache honoured)."""
    if os.path.exists(path_or_repo_id):
        location = Path(path_or_repo_id)
    elif path_or_repo_id.count("/") != 1 or path_or_repo_id.startswith(("/", ".")):
        raise ValueError(f"LoRA adapter {path_or_repo_id!r} is neither a file, a folder nor a Hub repo id (org/name).")
    else:
        accepted = ("cache_dir", "revision", "token", "local_files_only")
        patterns = [f"{subfolder}/*.json", f"{subfolder}/*.safetensors"] if subfolder else ["*.json", "*.safetensors"]
        try:
            location = Path(snapshot_download(
                path_or_repo_id, allow_patterns=patterns, **{k: v for k, v in hub_kwargs.items() if k in accepted}
            ))  # fmt: skip
        except OSError as error:  # huggingface_hub's not-found, offline and HTTP errors are all OSErrors
            raise ValueError(f"Could not fetch the LoRA adapter {path_or_repo_id!r} from the Hub: {error}") from error
    return location / subfolder if subfolder else location


def _read_lora_files(location: Path, weight_name: str | None = None) -> tuple[dict, dict | None]:
    """Weights and `LoraConfig` fields (prefixed by component) from a safetensors file, a PEFT folder or a folder
    with diffusers' single file. Nothing but safetensors and json is ever read."""
    if location.is_dir() and (location / ADAPTER_CONFIG_NAME).is_file():  # PEFT folder
        weights_path = location / ADAPTER_WEIGHTS_NAME
        if not weights_path.is_file():
            raise ValueError(f"{location} is a PEFT adapter folder without its {ADAPTER_WEIGHTS_NAME}.")
        try:
            config = json.loads((location / ADAPTER_CONFIG_NAME).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"Cannot read the LoRA adapter config {location / ADAPTER_CONFIG_NAME}: {error}") from error
        if not isinstance(config, dict):
            raise ValueError(f"{location / ADAPTER_CONFIG_NAME} must hold a JSON object.")
        return _load_safetensors(weights_path), {f"{TRANSFORMER}.{k}": v for k, v in config.items()}
    if location.is_dir():
        path = location / (weight_name or DIFFUSERS_WEIGHT_NAME)
        if not path.is_file():
            candidates = sorted(location.glob("*.safetensors"))
            if weight_name is not None or len(candidates) != 1:
                raise ValueError(
                    f"{location} is not a LoRA adapter folder: it lacks {[ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]} "
                    f"(PEFT format) and {DIFFUSERS_WEIGHT_NAME} (diffusers format)."
                )
            path = candidates[0]
    else:
        path = location
    if path.suffix != ".safetensors":
        raise ValueError(f"LoRA weights load from safetensors only; {path} is not a .safetensors file.")
    return _load_safetensors(path), _header_metadata(path)


def _load_safetensors(path: Path) -> dict:
    try:
        return load_file(path)
    except Exception as error:  # safetensors raises its own types for a truncated or corrupt file
        raise ValueError(f"Cannot read the LoRA weights {path}: {error}") from error


def _header_metadata(path: Path) -> dict | None:
    with safe_open(path, framework="pt") as f:
        raw = (f.metadata() or {}).get(LORA_ADAPTER_METADATA_KEY)
    try:
        return json.loads(raw) if raw else None
    except json.JSONDecodeError as error:
        raise ValueError(f"The LoRA config in the header of {path} is not valid JSON: {error}") from error


def _lora_config(weights: dict, metadata: dict | None, source) -> LoraConfig:
    """The adapter's `LoraConfig`: from its saved fields, or inferred from the weights (rank per module, alpha = rank)
    as diffusers does for files without them."""
    prefix = f"{TRANSFORMER}."
    fields = {k.removeprefix(prefix): v for k, v in (metadata or {}).items() if k.startswith(prefix)}
    if not fields:
        ranks = {f"^{k.removesuffix('.lora_B.weight')}$": v.shape[1] for k, v in weights.items()
                 if k.endswith(".lora_B.weight") and v.ndim == 2}  # fmt: skip
        if not ranks:
            raise ValueError(f"LoRA adapter {source}: no lora_B weights to read its rank from.")
        rank = max(set(ranks.values()), key=list(ranks.values()).count)
        modules = sorted({k.removesuffix(".lora_A.weight").removesuffix(".lora_B.weight") for k in weights})
        return LoraConfig(r=rank, lora_alpha=rank, target_modules=modules,
                          rank_pattern={k: r for k, r in ranks.items() if r != rank})  # fmt: skip
    peft_type = str(fields.pop("peft_type", "LORA")).upper().removeprefix("PEFTTYPE.")
    if peft_type != "LORA":
        raise ValueError(f"LoRA adapter {source} is a {peft_type} adapter; only LoRA is supported.")
    _refuse_unsafe_fields(fields, source)
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    try:
        return LoraConfig(**{k: v for k, v in fields.items() if k in known})
    except (TypeError, ValueError) as error:
        raise ValueError(f"LoRA adapter {source} has an invalid config: {error}") from error


# `LoraConfig` fields an adapter from a stranger may set: plain LoRA on linear layers, nothing that touches the base
# weights (PiSSA, OLoRA, LoftQ, EVA, CorDA initialise by rewriting them), its structure (`layer_replication`,
# `modules_to_save`, `trainable_token_indices`, `target_parameters`) or adds weights we do not check. Every other
# field must keep peft's default.
SAFE_LORA_FIELDS = {
    "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision", "inference_mode", "r",
    "target_modules", "exclude_modules", "lora_alpha", "lora_dropout", "fan_in_fan_out", "use_rslora",
    "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern", "init_lora_weights", "bias",
}  # fmt: skip
SAFE_INIT_LORA_WEIGHTS = (True, False, "gaussian")  # they initialise A and B only, never the base layer
# peft matches these as regular expressions; without quantifiers, groups or classes a match takes linear time
PATTERN_FIELDS = ("target_modules", "exclude_modules", "layers_pattern")
LINEAR_TIME_PATTERN = re.compile(r"^[\w.^$|-]*$")
MAX_PATTERN_LENGTH = 4096


def _refuse_unsafe_fields(fields: dict, source) -> None:
    defaults = LoraConfig()
    for name, value in fields.items():
        if name in SAFE_LORA_FIELDS or not hasattr(defaults, name) or value == getattr(defaults, name):
            continue
        if value in (None, {}, []) and getattr(defaults, name) in (None, {}, []):
            continue
        raise ValueError(
            f"LoRA adapter {source}: `{name}` = {value!r} is refused; it would change the base model's weights or "
            f"structure. Only plain LoRA on linear layers loads (fields {sorted(SAFE_LORA_FIELDS)})."
        )
    if fields.get("init_lora_weights", True) not in SAFE_INIT_LORA_WEIGHTS:
        raise ValueError(
            f"LoRA adapter {source}: `init_lora_weights` = {fields['init_lora_weights']!r} is refused; it initialises "
            f"by rewriting the base weights. Allowed: {list(SAFE_INIT_LORA_WEIGHTS)}."
        )
    if fields.get("bias", "none") != "none":
        raise ValueError(f"LoRA adapter {source}: `bias` = {fields['bias']!r} is refused; it trains the base layers' "
                         "biases. Allowed: 'none'.")  # fmt: skip
    patterns = [(name, fields.get(name)) for name in PATTERN_FIELDS]
    patterns += [(f"{name} key", key) for name in ("rank_pattern", "alpha_pattern") for key in (fields.get(name) or {})]
    for name, value in patterns:
        for pattern in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
            if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_LENGTH or not LINEAR_TIME_PATTERN.match(pattern):
                raise ValueError(
                    f"LoRA adapter {source}: `{name}` {str(pattern)[:80]!r} is refused: patterns may hold only names, "
                    "'.', '^', '$' and '|' (no quantifiers, groups or classes), so matching them cannot hang."
                )


def _check_adapter_fits(transformer: torch.nn.Module, config: LoraConfig, state_dict: dict, source) -> None:
    """Every target module exists, is a linear layer, and has A and B matrices of matching shapes."""
    # the model's own modules, not the insides of LoRA layers already loaded
    modules = {n: m for n, m in transformer.named_modules() if not re.search(r"\.(base_layer|lora_\w+)(\.|$)", n)}
    targeted = {name for name in modules if name and check_target_module_exists(config, name)}
    if not targeted:
        targets = config.target_modules
        targets = sorted(targets) if isinstance(targets, (set, list)) else targets
        raise ValueError(f"LoRA adapter {source}: its target_modules {targets!r} match no module of the transformer.")
    matrices: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise ValueError(f"LoRA adapter {source}: unexpected weight {key!r}; only lora_A / lora_B weights load.")
        matrices.setdefault(match["module"], {})[match["matrix"]] = tensor
    unknown = sorted(set(matrices) - set(modules))
    if unknown:
        raise ValueError(f"LoRA adapter {source}: it has weights for {unknown[0]!r}, a module the transformer does not have.")
    for name in sorted(targeted | set(matrices)):
        module = modules[name]
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
        if not isinstance(base, torch.nn.Linear):
            raise ValueError(f"LoRA adapter {source}: module {name!r} is not a linear layer of the transformer.")
        pair = matrices.get(name, {})
        if set(pair) != {"A", "B"}:
            raise ValueError(f"LoRA adapter {source}: module {name!r} lacks its lora_A / lora_B weights.")
        a, b = pair["A"], pair["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != base.in_features or b.shape[0] != base.out_features or a.shape[0] != b.shape[1]:
            raise ValueError(
                f"LoRA adapter {source}: shapes A {tuple(a.shape)}, B {tuple(b.shape)} do not fit module {name!r} "
                f"({base.in_features} -> {base.out_features})."
            )
