"""diffusers' newer pytest-style pipeline LoRA mixin (tests/pipelines/testing_utils/lora.py: `LoraTesterMixin`) run
against `videoar_hf.VideoARPipeline`, configured by `VideoARPipelineTesterConfig` from test_pipeline_mixins_new.py.

VideoARPipeline: `LoraBaseMixin` subclass, `_lora_loadable_modules = ["transformer"]` (no text-encoder LoRA, so
the text-encoder-only tests skip themselves), `attention_kwargs={"scale": s}`, transformer attention linears named
q_proj/k_proj/v_proj/o_proj.

Skips added here (premise absent), each with its reason:
- tests that save/load `pytorch_lora_weights.bin` (`save_lora_weights(..., safe_serialization=False)`): the project
  refuses pickle files by design (save_lora_weights raises ValueError for safe_serialization=False).
Not used: `LoraMemoryTesterMixin` (accelerator-only), `UNetLoraTesterMixin` (no UNet).
"""

import pytest

from diffusers_tests.pipelines.testing_utils import LoraTesterMixin

from skip_reasons import SAFETENSORS_ONLY
from test_pipeline_mixins_new import VideoARPipelineTesterConfig




class TestVideoARPipelineLora(VideoARPipelineTesterConfig, LoraTesterMixin):
    denoiser_target_modules = {"transformer": ["q_proj", "k_proj", "v_proj", "o_proj"]}

    # `.bin` (pickle) LoRA checkpoints: save_lora_weights(safe_serialization=False) / load_lora_weights(*.bin).
    @pytest.mark.skip(reason=SAFETENSORS_ONLY)
    def test_low_cpu_mem_usage_with_loading(self, tmp_path):
        pass

    @pytest.mark.skip(reason=SAFETENSORS_ONLY)
    def test_simple_inference_with_text_denoiser_lora_save_load(self, tmp_path):
        pass
