"""transformers' own `ModelTesterMixin` and `ConfigTester` against `VideoARTransformer` (see `upstream_suites`).

Every skip names why its premise does not exist in this architecture; none hides a failure.
"""

import unittest

import torch

from videoar_hf import VideoARConfig, VideoARTransformer
from videoar_hf.quantizer import MultiScaleBitwiseQuantizer, pack_scales
from videoar_hf.scale_schedule import get_scale_sizes

from upstream_suites import transformers_tests

upstream = transformers_tests()
from transformers_upstream_tests.test_configuration_common import ConfigTester  # noqa: E402
from transformers_upstream_tests.test_modeling_common import ModelTesterMixin  # noqa: E402


class VideoARTransformerTester:
    """Tiny configs and inputs: 2 latent frames on a 4x4 grid with scales (1, 2, 4), a 5-token text prefix."""

    def __init__(self, parent, batch_size=3, num_frames=2, grid=4, text_length=5, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.num_frames = num_frames
        self.grid = grid
        self.text_length = text_length
        self.is_training = is_training
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 2
        self.latent_bits = 8
        self.scale_schedule = [1, 2, 4]
        self.tokens_per_frame = sum(h * w for h, w in get_scale_sizes(self.scale_schedule, grid, grid))
        self.seq_length = text_length + num_frames * self.tokens_per_frame  # hidden states include the prefix

    def get_config(self) -> VideoARConfig:
        return VideoARConfig(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=37,
            latent_bits=self.latent_bits,
            scale_schedule=self.scale_schedule,
            text_hidden_size=16,
            frame_mask_prob=0.0,  # deterministic in training mode, as the suite's determinism tests expect
        )

    def prepare_config_and_inputs(self):
        config = self.get_config()
        latents = torch.randn(self.batch_size, self.latent_bits, self.num_frames, self.grid, self.grid)
        pyramid = MultiScaleBitwiseQuantizer(self.latent_bits).residual_quantize(
            latents, get_scale_sizes(self.scale_schedule, self.grid, self.grid)
        )
        text_mask = torch.ones(self.batch_size, self.text_length, dtype=torch.long)
        text_mask[-1, -2:] = 0  # the last prompt is shorter, right-padded
        inputs = {
            "scale_inputs": pack_scales(pyramid.scale_inputs),
            "text_hidden_states": torch.randn(self.batch_size, self.text_length, 16),
            "text_attention_mask": text_mask,
        }
        labels = pack_scales(pyramid.bits).float()
        return config, inputs, labels

    def prepare_config_and_inputs_for_common(self):
        config, inputs, _ = self.prepare_config_and_inputs()
        return config, inputs


class VideoARTransformerModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (VideoARTransformer,)
    additional_model_inputs = ["text_hidden_states"]
    test_resize_embeddings = False  # inputs are bit features, not token ids: there is no vocabulary to resize
    test_can_init_all_missing_weights_before_2023 = True  # the suite dates models by a copyright line; run it anyway

    def setUp(self):
        self.model_tester = VideoARTransformerTester(self)
        self.config_tester = ConfigTester(
            self, config_class=VideoARConfig, hidden_size=32, num_attention_heads=2, has_text_modality=False
        )

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:  # one target bit per input feature
            inputs_dict["labels"] = (inputs_dict["scale_inputs"] > 0).float()
        return inputs_dict

    @unittest.skip("the input embedding is the Linear projection of bit features, never an nn.Embedding (see below)")
    def test_model_get_set_embeddings(self):
        pass

    def test_input_embeddings_are_the_bit_projection(self):
        model = VideoARTransformer(self.model_tester.get_config())
        self.assertIs(model.get_input_embeddings(), model.input_proj)
        replacement = torch.nn.Linear(self.model_tester.latent_bits, self.model_tester.hidden_size)
        model.set_input_embeddings(replacement)
        self.assertIs(model.get_input_embeddings(), replacement)
        self.assertIsNone(model.get_output_embeddings())

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_loss_from_labels(self):
        config, inputs, labels = self.model_tester.prepare_config_and_inputs()
        model = VideoARTransformer(config).eval()
        loss = model(**inputs, labels=labels).loss
        self.assertTrue(torch.isfinite(loss) and loss.ndim == 0)
