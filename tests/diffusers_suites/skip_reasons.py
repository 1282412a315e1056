"""Why a diffusers test's premise does not hold for VideoAR; one wording for every file here."""

SAFETENSORS_ONLY = "builds on .bin files (safe_serialization=False), refused by the project's safety policy; " \
    "the same behaviour is tested with safetensors in tests/test_diffusers_features.py and tests/test_lora.py"
VIDEO_TOKENIZER = (
    "takes every component named *tokenizer* for a text component, but `video_tokenizer` is the video VAE "
    "(tests/test_diffusers_features.py::test_encode_prompt_needs_only_the_text_components covers this)"
)
