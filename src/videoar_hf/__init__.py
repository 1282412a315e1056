"""VideoAR in diffusers and transformers: autoregressive video generation by next-frame and next-scale prediction."""

import logging as _logging

# torchao (optional: int8 loading) says at import, on every machine without CUDA, that its CUDA kernels cannot load,
# and so do diffusers and torch about it; none of it concerns VideoAR. A level the user set is kept.
for _name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    if _logging.getLogger(_name).level == _logging.NOTSET:
        _logging.getLogger(_name).setLevel(_logging.ERROR)

from transformers import AutoConfig, AutoModel  # noqa: E402

from .configuration_videoar import VIDEOAR_PRESETS, VideoARConfig  # noqa: E402
from .modeling_tokenizer import VideoARTokenizer  # noqa: E402
from .modeling_videoar import VideoARTransformer  # noqa: E402
from .pipeline_videoar import VideoARPipeline, VideoARPipelineOutput  # noqa: E402
from .shipped_model import shipped_model_path  # noqa: E402

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
