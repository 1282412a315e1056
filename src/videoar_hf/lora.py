"""LoRA adapters on the pipeline's transformer, with diffusers' method names, on peft directly.

An adapter folder is in the standard PEFT format, `adapter_config.json` + `adapter_model.safetensors` with keys
`base_model.model.<module>.lora_{A,B}.weight`, so `peft.PeftModel.from_pretrained(transformer, folder)` reads it too.
transformers' own adapter integration is not used: it can save adapter files in place of the model, and re-prefix
keys on reload (DESIGN.md).
"""

import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers.utils import logging
from diffusers.utils.peft_utils import delete_adapter_layers, set_weights_and_activate_adapters
from huggingface_hub import snapshot_download
from peft import LoraConfig, PeftConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils import CONFIG_NAME as ADAPTER_CONFIG_NAME
from peft.utils import SAFETENSORS_WEIGHTS_NAME as ADAPTER_WEIGHTS_NAME
from safetensors.torch import load_file, save_file

from .atomic_directory import atomic_directory

logger = logging.get_logger(__name__)

PEFT_KEY_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<matrix>[AB])\.weight$")


class VideoARLoraLoaderMixin:
    """`load_lora_weights`, `set_adapters`, `fuse_lora`, ... for `VideoARPipeline`, as in diffusers' LoRA loaders.

    Adapters live on `self.transformer`. The last loaded adapter is the active one until `set_adapters` says
    otherwise. A method that rejects its input leaves the pipeline exactly as it was.
    """

    # ------------------------------------------------------------------ loading and saving adapters

    def load_lora_weights(self, pretrained_model_name_or_path: str | os.PathLike, adapter_name: str | None = None, **kwargs):
        """Load a PEFT LoRA adapter from a folder or a Hub repo id into the transformer and make it the active one.

        Args:
            pretrained_model_name_or_path: a folder with `adapter_config.json` and `adapter_model.safetensors`, or a
                Hub repo id holding them (`cache_dir`, `revision`, `token`, `local_files_only`, `subfolder` apply).
            adapter_name: a new name for it; `default_{i}` by default.
        """
        self._refuse_while_fused("load_lora_weights")
        loaded = self.get_list_adapters()
        adapter_name = adapter_name or f"default_{len(loaded)}"
        if adapter_name in loaded:
            raise ValueError(f"`adapter_name` {adapter_name!r} is already loaded; pick a new name or `delete_adapters` it first.")
        folder = _adapter_folder(str(pretrained_model_name_or_path), **kwargs)
        config, state_dict = _read_adapter(folder)
        _check_adapter_fits(self.transformer, config, state_dict, folder)

        try:
            with warnings.catch_warnings():  # peft warns on every second adapter, which is what we want
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
                inject_adapter_in_model(config, self.transformer, adapter_name=adapter_name)
            result = set_peft_model_state_dict(self.transformer, state_dict, adapter_name=adapter_name)
            if result.unexpected_keys:
                raise ValueError(f"the transformer has no place for {result.unexpected_keys[:3]}")
        except Exception as error:
            self._remove_adapter(adapter_name)
            raise ValueError(f"LoRA adapter {folder} does not fit the transformer: {error}") from error
        set_weights_and_activate_adapters(self.transformer, [adapter_name], [1.0])

    def save_lora_weights(self, save_directory: str | os.PathLike, adapter_name: str | None = None) -> None:
        """Write one adapter (the active one by default) in the PEFT format, atomically."""
        names = self.get_list_adapters()
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

    def get_list_adapters(self) -> list[str]:
        """Names of every loaded adapter, in loading order."""
        return list(getattr(self.transformer, "peft_config", {}))

    def get_active_adapters(self) -> list[str]:
        """Names of the adapters that take part in generation."""
        layers = self._lora_layers()
        return [name for name in layers[0][1].active_adapters if name in self.get_list_adapters()] if layers else []

    def set_adapters(self, adapter_names: str | list[str], adapter_weights: float | list[float] | None = None) -> None:
        """Activate `adapter_names`, each scaled by its weight (1 by default); their updates add up."""
        self._refuse_while_fused("set_adapters")
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        unknown = [name for name in names if name not in self.get_list_adapters()]
        if unknown or not names:
            raise ValueError(f"Unknown adapter(s) {unknown or names} in `adapter_names`; loaded: {self.get_list_adapters()}.")
        weights = [1.0] * len(names) if adapter_weights is None else adapter_weights
        weights = [weights] * len(names) if isinstance(weights, (int, float)) else list(weights)
        if len(weights) != len(names) or not all(isinstance(w, (int, float)) and abs(w) < float("inf") for w in weights):
            raise ValueError(f"`adapter_weights` needs one finite number per adapter in {names}, got {adapter_weights!r}.")
        set_weights_and_activate_adapters(self.transformer, names, weights)

    def delete_adapters(self, adapter_names: str | list[str]) -> None:
        """Remove adapters entirely."""
        self._refuse_while_fused("delete_adapters")
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        unknown = [name for name in names if name not in self.get_list_adapters()]
        if unknown:
            raise ValueError(f"Unknown adapter(s) {unknown} in `adapter_names`; loaded: {self.get_list_adapters()}.")
        remaining = [name for name in self.get_active_adapters() if name not in names]
        for name in names:
            self._remove_adapter(name)
        for _, layer in self._lora_layers():
            layer.set_adapter(remaining)  # the others stay active at their weights

    # ------------------------------------------------------------------ fusing

    def fuse_lora(self, lora_scale: float = 1.0) -> None:
        """Add the active adapters (at their `set_adapters` weights, times `lora_scale`) into the transformer's
        weights, so generation runs at the base model's speed. `unfuse_lora` takes them out again; after
        `unload_lora_weights` they stay, and `save_pretrained` saves the fused weights."""
        if not isinstance(lora_scale, (int, float)) or not abs(lora_scale) < float("inf"):
            raise ValueError(f"`lora_scale` must be a finite number, got {lora_scale!r}.")
        active = self.get_active_adapters()
        if not active:
            raise ValueError("No active LoRA adapter to fuse; `load_lora_weights` first.")
        self._refuse_while_fused("fuse_lora")
        self._scaling_before_fuse = {}
        for name, layer in self._lora_layers():
            present = [a for a in active if a in layer.lora_A]
            self._scaling_before_fuse[name] = dict(layer.scaling)
            for adapter in present:
                layer.scaling[adapter] *= lora_scale
            layer.merge(adapter_names=present)

    def unfuse_lora(self) -> None:
        """Take fused adapters back out of the weights (exactly, up to float rounding)."""
        if not self._is_fused():
            logger.warning("`unfuse_lora`: no LoRA is fused; nothing to do.")
            return
        for name, layer in self._lora_layers():
            layer.unmerge()
            layer.scaling.update(self._scaling_before_fuse[name])

    def unload_lora_weights(self) -> None:
        """Remove every adapter. Fused adapters stay in the weights (as in diffusers); unfused ones are gone."""
        self._put_back_base_layers(self._lora_layers())
        if self.get_list_adapters():
            del self.transformer.peft_config

    # ------------------------------------------------------------------ helpers

    def _lora_layers(self) -> list[tuple[str, BaseTunerLayer]]:
        return [(n, m) for n, m in self.transformer.named_modules() if isinstance(m, BaseTunerLayer)]

    def _is_fused(self) -> bool:
        return any(layer.merged for _, layer in self._lora_layers())

    def _refuse_while_fused(self, method: str) -> None:
        # a merged peft layer ignores every unmerged adapter, so changing adapters now would silently do nothing
        if self._is_fused():
            raise ValueError(f"`{method}` while a LoRA is fused: call `unfuse_lora()` (or `unload_lora_weights()`) first.")

    def _remove_adapter(self, adapter_name: str) -> None:
        delete_adapter_layers(self.transformer, adapter_name)
        self.transformer.peft_config.pop(adapter_name)
        self._put_back_base_layers([(n, m) for n, m in self._lora_layers() if not m.lora_A])  # modules left bare
        if not self.get_list_adapters():
            del self.transformer.peft_config

    def _put_back_base_layers(self, layers: list[tuple[str, BaseTunerLayer]]) -> list[tuple[torch.nn.Module, str, BaseTunerLayer]]:
        """Replace each LoRA layer by the linear layer it wraps; return what to restore."""
        swapped = []
        for name, layer in layers:
            parent_name, _, child = name.rpartition(".")
            parent = self.transformer.get_submodule(parent_name)
            setattr(parent, child, layer.get_base_layer())
            swapped.append((parent, child, layer))
        return swapped

    @contextmanager
    def _lora_layers_detached(self):
        """The plain modules in place of the LoRA layers for the duration: a fused model saves as a plain one."""
        swapped = self._put_back_base_layers(self._lora_layers())
        try:
            yield
        finally:
            for parent, child, layer in swapped:
                setattr(parent, child, layer)

    def _check_savable(self) -> None:
        if self.get_list_adapters() and not all(layer.merged for _, layer in self._lora_layers()):
            raise ValueError(
                f"The transformer carries unfused LoRA adapter(s) {self.get_list_adapters()}. Save the adapter with "
                "`save_lora_weights(folder)`, or bake it in with `fuse_lora()` and then save the pipeline."
            )


def _adapter_folder(path_or_repo_id: str, subfolder: str | None = None, **hub_kwargs) -> Path:
    """A local folder, or a snapshot of the adapter files of a Hub repo (offline cache honoured)."""
    if os.path.isdir(path_or_repo_id):
        folder = Path(path_or_repo_id)
    elif os.path.exists(path_or_repo_id) or path_or_repo_id.count("/") != 1:
        raise ValueError(f"LoRA adapter {path_or_repo_id!r} is neither a folder nor a Hub repo id (org/name).")
    else:
        accepted = ("cache_dir", "revision", "token", "local_files_only")
        patterns = [f"{subfolder}/*" if subfolder else "*"]
        try:
            folder = Path(snapshot_download(
                path_or_repo_id, allow_patterns=patterns, **{k: v for k, v in hub_kwargs.items() if k in accepted}
            ))  # fmt: skip
        except OSError as error:  # huggingface_hub's not-found, offline and HTTP errors are all OSErrors
            raise ValueError(f"Could not fetch the LoRA adapter {path_or_repo_id!r} from the Hub: {error}") from error
    return folder / subfolder if subfolder else folder


def _read_adapter(folder: Path) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    config_path, weights_path = folder / ADAPTER_CONFIG_NAME, folder / ADAPTER_WEIGHTS_NAME
    missing = [p.name for p in (config_path, weights_path) if not p.is_file()]
    if missing:
        raise ValueError(
            f"{folder} is not a LoRA adapter folder: it lacks {missing} (PEFT format: {ADAPTER_CONFIG_NAME} and "
            f"{ADAPTER_WEIGHTS_NAME})."
        )
    try:
        config = PeftConfig.from_pretrained(str(folder))
        state_dict = load_file(weights_path)
    except Exception as error:  # json, peft and safetensors each raise their own types for a broken file
        raise ValueError(f"Cannot read the LoRA adapter in {folder}: {error}") from error
    if not isinstance(config, LoraConfig):
        raise ValueError(f"{folder} holds a {type(config).__name__} adapter; only LoRA is supported.")
    return config, {k.removeprefix(PEFT_KEY_PREFIX): v for k, v in state_dict.items()}


def _check_adapter_fits(transformer: torch.nn.Module, config: LoraConfig, state_dict: dict, folder: Path) -> None:
    """Every target module exists, is a linear layer, and has A and B matrices of matching shapes."""
    # the model's own modules, not the insides of LoRA layers already loaded
    modules = {n: m for n, m in transformer.named_modules() if not re.search(r"\.(base_layer|lora_\w+)(\.|$)", n)}
    targeted = {name for name in modules if name and check_target_module_exists(config, name)}
    if not targeted:
        targets = config.target_modules
        targets = sorted(targets) if isinstance(targets, (set, list)) else targets
        raise ValueError(f"LoRA adapter {folder}: its target_modules {targets!r} match no module of the transformer.")
    matrices: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise ValueError(f"LoRA adapter {folder}: unexpected weight {key!r}; only lora_A / lora_B weights load.")
        matrices.setdefault(match["module"], {})[match["matrix"]] = tensor
    unknown = sorted(set(matrices) - set(modules))
    if unknown:
        raise ValueError(f"LoRA adapter {folder}: it has weights for {unknown[0]!r}, a module the transformer does not have.")
    for name in sorted(targeted | set(matrices)):
        module = modules[name]
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
        if not isinstance(base, torch.nn.Linear):
            raise ValueError(f"LoRA adapter {folder}: module {name!r} is not a linear layer of the transformer.")
        pair = matrices.get(name, {})
        if set(pair) != {"A", "B"}:
            raise ValueError(f"LoRA adapter {folder}: module {name!r} lacks its lora_A / lora_B weights.")
        a, b = pair["A"], pair["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != base.in_features or b.shape[0] != base.out_features or a.shape[0] != b.shape[1]:
            raise ValueError(
                f"LoRA adapter {folder}: shapes A {tuple(a.shape)}, B {tuple(b.shape)} do not fit module {name!r} "
                f"({base.in_features} -> {base.out_features})."
            )
