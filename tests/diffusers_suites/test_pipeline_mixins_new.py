"""diffusers' newer pytest-style pipeline mixins (tests/pipelines/testing_utils: BasePipelineTesterConfig +
PipelineTesterMixin, MemoryTesterMixin, LayerwiseCastingTesterMixin; LoraTesterMixin runs in test_pipeline_lora_mixin.py) run against
`videoar_hf.VideoARPipeline`, set up like tests/pipelines/wan/test_wan.py.

VideoAR is autoregressive: no scheduler, no `num_inference_steps`, no initial noise `latents` (dropped from
`optional_input_params`); `num_videos_per_prompt` replaces `num_images_per_prompt` (as in Wan's config).
Not used (premise absent): cache mixins (PAB/FasterCache/FBC/TaylorSeer/MagCache: diffusion-step caches),
UNetLoraTesterMixin (no UNet), pipeline quantization tests (slow, Hub checkpoints + accelerator).
"""


from diffusers_tests.pipelines.pipeline_params import (
    TEXT_TO_IMAGE_BATCH_PARAMS,
    TEXT_TO_IMAGE_CALLBACK_CFG_PARAMS,
    TEXT_TO_IMAGE_PARAMS,
)
from diffusers_tests.pipelines.testing_utils import (
    BasePipelineTesterConfig,
    LayerwiseCastingTesterMixin,
    MemoryTesterMixin,
    PipelineTesterMixin,
)
from diffusers_tests.testing_utils import enable_full_determinism

from skip_reasons import SAFETENSORS_ONLY, PipelineSkips, skipped
from videoar_hf import VideoARPipeline
from videoar_hf.testing_utils import tiny_pipeline


enable_full_determinism()


class VideoARPipelineTesterConfig(BasePipelineTesterConfig):
    pipeline_class = VideoARPipeline
    required_input_params_in_call_signature = TEXT_TO_IMAGE_PARAMS - {"cross_attention_kwargs"}
    batch_input_params = TEXT_TO_IMAGE_BATCH_PARAMS
    callback_cfg_params = TEXT_TO_IMAGE_CALLBACK_CFG_PARAMS
    output_shape = (5, 3, 32, 32)  # (frames, channels, height, width) for output_type="pt"
    optional_input_params = frozenset(
        [
            "num_videos_per_prompt",
            "generator",
            "output_type",
            "return_dict",
            "callback_on_step_end",
            "callback_on_step_end_tensor_inputs",
        ]
    )

    def get_dummy_components(self):
        return dict(tiny_pipeline(seed=0).components)

    def get_dummy_inputs(self):
        return {
            "prompt": "dance monkey",
            "negative_prompt": "negative",
            "generator": self.get_generator(0),
            "guidance_scale": 3.0,
            "height": 32,
            "width": 32,
            "num_frames": 5,
            "max_sequence_length": 16,
            "output_type": "pt",
        }


class TestVideoARPipeline(PipelineSkips, VideoARPipelineTesterConfig, PipelineTesterMixin):
    test_torch_dtype_dict = skipped(SAFETENSORS_ONLY)

    # The mixin copies `num_inference_steps` into the batched inputs by default; VideoAR has no such argument.
    def test_inference_batch_single_identical(self):
        super().test_inference_batch_single_identical(additional_params_copy_to_batched_inputs=[])


class TestVideoARPipelineMemory(VideoARPipelineTesterConfig, MemoryTesterMixin):
    """Offload / group offload / layerwise casting; MemoryTesterMixin is accelerator-only."""


class TestVideoARPipelineLayerwiseCasting(VideoARPipelineTesterConfig, LayerwiseCastingTesterMixin):
    """Layerwise casting alone is not accelerator-gated, so it also runs on CPU."""


# The LoraTesterMixin class lives in test_pipeline_lora_mixin.py (it reuses VideoARPipelineTesterConfig).
