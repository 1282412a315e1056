"""The VideoAR Hugging Face Space: `python app.py` runs it locally on CPU; on a ZeroGPU Space, `spaces.GPU` lends the
generating function a GPU per request."""

import os

import torch

from videoar_hf import VideoARPipeline, shipped_model_path
from videoar_hf.app import DemoLimits, build_demo

try:
    import spaces

    gpu = spaces.GPU(duration=60)
except ImportError:  # not on a Space: run as it is
    gpu = None

model = os.environ.get("VIDEOAR_MODEL") or shipped_model_path()
device = "cuda" if torch.cuda.is_available() else "cpu"
pipe = VideoARPipeline.from_pretrained(model).to(device)
demo = build_demo(pipe, DemoLimits(), gpu=gpu)

if __name__ == "__main__":
    demo.launch()
