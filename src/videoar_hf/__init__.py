"""VideoAR in diffusers and transformers: autoregressive video generation by next-frame and next-scale prediction."""

from transformers import AutoConfig, AutoModel

from .configuration_videoar import VIDEOAR_PRESETS, VideoARConfig
from .modeling_tokenizer import VideoARTokenizer
from .modeling_videoar import VideoARTransformer
from .pipeline_videoar import VideoARPipeline, VideoARPipelineOutput
from .shipped_model import shipped_model_path

AutoConfig.register(VideoARConfig.model_type, VideoARConfig, exist_ok=True)
AutoModel.register(VideoARConfig, VideoARTransformer, exist_ok=True)

__version__ = "0.1.0.dev0"

__all__ = [
    "VIDEOAR_PRESETS",
    "VideoARConfig",
    "VideoARPipeline",
    "VideoARPipelineOutput",
    "VideoARTokenizer",
    "VideoARTransformer",
    "shipped_model_path",
]
