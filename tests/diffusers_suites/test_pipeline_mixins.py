"""diffusers' classic `PipelineTesterMixin` (tests/pipelines/test_pipelines_common.py, unittest style) run against
`videoar_hf.VideoARPipeline`, set up like a video pipeline's fast tests (cf. tests/pipelines/ltx/test_ltx.py).

VideoAR is autoregressive (next-frame, next-scale bit prediction): it has no scheduler, no `num_inference_steps` and
no initial noise `latents`, so those are dropped from `required_optional_params`; it is a video pipeline, so
`num_videos_per_prompt` stands in for `num_images_per_prompt` (as Wan's tests do).

Cache mixins (PAB, FasterCache, FirstBlockCache, TaylorSeer, MagCache), IP-adapter mixins, SD/Karras/FromPipe
mixins are not used: they need diffusion timesteps / schedulers / UNets / IP adapters that VideoAR does not have.
"""

import unittest

import torch

from diffusers_tests.pipelines.pipeline_params import (
    TEXT_TO_IMAGE_BATCH_PARAMS,
    TEXT_TO_IMAGE_CALLBACK_CFG_PARAMS,
    TEXT_TO_IMAGE_IMAGE_PARAMS,
    TEXT_TO_IMAGE_PARAMS,
)
from diffusers_tests.pipelines.test_pipelines_common import PipelineTesterMixin
from diffusers_tests.testing_utils import enable_full_determinism

from skip_reasons import SAFETENSORS_ONLY, PipelineSkips, skipped
from test_pipeline_mixins_new import VideoARPipelineTesterConfig
from videoar_hf import VideoARPipeline
from videoar_hf.testing_utils import tiny_pipeline


enable_full_determinism()


class VideoARPipelineFastTests(PipelineSkips, PipelineTesterMixin, unittest.TestCase):
    test_dtype_alias = skipped(SAFETENSORS_ONLY)
    test_dtype_dict = skipped(SAFETENSORS_ONLY)

    pipeline_class = VideoARPipeline
    params = TEXT_TO_IMAGE_PARAMS - {"cross_attention_kwargs"}
    batch_params = TEXT_TO_IMAGE_BATCH_PARAMS
    image_params = TEXT_TO_IMAGE_IMAGE_PARAMS
    image_latents_params = TEXT_TO_IMAGE_IMAGE_PARAMS
    callback_cfg_params = TEXT_TO_IMAGE_CALLBACK_CFG_PARAMS
    required_optional_params = VideoARPipelineTesterConfig.optional_input_params  # the same list in both styles
    test_xformers_attention = False  # no xformers path (and no xformers/CUDA here)
    test_layerwise_casting = True  # the transformer has enable_layerwise_casting (DiffusersMemoryMixin)
    test_group_offloading = True  # the transformer has enable_group_offload (DiffusersMemoryMixin)

    def get_dummy_components(self):
        return dict(tiny_pipeline(seed=0).components)

    def get_dummy_inputs(self, device, seed=0):
        if str(device).startswith("mps"):
            generator = torch.manual_seed(seed)
        else:
            generator = torch.Generator(device=device).manual_seed(seed)
        return {
            "prompt": "dance monkey",
            "negative_prompt": "",
            "generator": generator,
            "guidance_scale": 3.0,
            "height": 32,
            "width": 32,
            "num_frames": 5,  # 1 + 4k
            "max_sequence_length": 16,
            "output_type": "np",  # the pipeline default; the mixin compares numpy HWC frames
        }

    # The mixin copies `num_inference_steps` into the batched inputs by default; VideoAR has no such argument, so
    # the list of extra arguments to copy is empty (the test itself runs unchanged otherwise).
    def test_inference_batch_single_identical(self):
        self._test_inference_batch_single_identical(
            batch_size=3, expected_max_diff=1e-4, additional_params_copy_to_batched_inputs=[]
        )
