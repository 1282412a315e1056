"""diffusers' own model, pipeline and LoRA test mixins, run against our classes on a developer's machine.

diffusers ships no test mixins in any distribution, so these run only when `VIDEOAR_DIFFUSERS_TESTS` names the
`tests/` folder of a diffusers checkout (imported here as the package `diffusers_tests`); CI skips this folder. The
tests in `tests/test_diffusers_features.py` and `tests/test_lora.py` cover the same behaviours in CI, in our words.

    VIDEOAR_DIFFUSERS_TESTS=/path/to/diffusers/tests python -m pytest tests/diffusers_suites -rs

diffusers' `test_pipelines_common` also needs `pip install requests-mock`. Every skip written here names why its
premise does not hold for VideoAR.
"""

import importlib.util
import os
import sys
from pathlib import Path

TESTS = os.environ.get("VIDEOAR_DIFFUSERS_TESTS")
if TESTS:
    spec = importlib.util.spec_from_file_location(
        "diffusers_tests", Path(TESTS) / "__init__.py", submodule_search_locations=[TESTS]
    )
    sys.modules["diffusers_tests"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["diffusers_tests"])

_MARKERS = [
    "big_accelerator", "lora", "ip_adapter", "training", "attention", "memory", "cpu_offload", "group_offload",
    "compile", "torch_compile", "single_file", "quantization", "bitsandbytes", "quanto", "torchao", "gguf", "modelopt",
    "sdnq", "context_parallel", "tensor_parallel", "slow", "nightly", "cache",
]  # fmt: skip


def pytest_configure(config):
    for marker in _MARKERS:
        config.addinivalue_line("markers", f"{marker}: a diffusers test marker")
