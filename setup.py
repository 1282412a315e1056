from setuptools import find_packages, setup

# torch stays loose so GPU users keep their own build; on a CPU-only machine install `torch==2.13.0`
# first (see README), or pip resolves the newest CUDA wheel.
install_requires = [
    "torch>=2.6",
    "diffusers>=0.42",
    "transformers>=5.0",
    "accelerate>=1.0",
    "safetensors>=0.4",
    "peft>=0.17",
    "huggingface-hub>=1.0",
    "numpy",
    "pillow",
    "tqdm",
    "imageio",
    "imageio-ffmpeg",
    "av",  # decoding with rotation and frame timing, the same for training and for `videoar generate --video`
]

extras = {
    "train": ["datasets>=4.0", "tensorboard", "matplotlib", "pyyaml"],
    "app": ["gradio>=5.0"],
    "quantization": ["torchao>=0.12"],  # int8 weight-only loading through transformers' / diffusers' TorchAoConfig
}
# the tests cover training and the demo too (the browser test also needs Debian's chromium; .ci/run installs it)
# `parameterized`: transformers' own common tests, which the suite runs from transformers' sdist
extras["test"] = [
    "pytest>=8", "pytest-timeout", "playwright", "parameterized",
    *extras["train"], *extras["app"], *extras["quantization"],
]  # fmt: skip
extras["dev"] = sorted({req for reqs in extras.values() for req in reqs})

setup(
    name="videoar-hf",
    version="0.1.0.dev0",
    description="VideoAR (arXiv 2601.05966): autoregressive video generation by next-frame and next-scale prediction, "
    "in diffusers and transformers.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    # the shipped VideoAR-Shapes pipeline (see `videoar_hf.shipped_model_path`)
    package_data={"videoar_hf": ["shipped/**/*"]},
    python_requires=">=3.10",
    install_requires=install_requires,
    extras_require=extras,
    entry_points={"console_scripts": ["videoar=videoar_hf.cli:main"]},
)
