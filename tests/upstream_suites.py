"""transformers' own common test suites, taken from its source distribution at test time.

transformers ships `tests/test_modeling_common.py` and `tests/test_configuration_common.py` in its sdist, so the
test run downloads the sdist of the installed version from the package index (never GitHub), unpacks its `tests/`
into a cache outside the repository, and imports it as the package `transformers_upstream_tests`. Nothing of it is
copied into this repository.

Three modules those files import are not in the sdist; we write them into the cache ourselves:
- `exporters/test_export.py`: an empty `ExportTesterMixin` (its torch.export tests are not in the sdist);
- `generation/test_utils.py`: an empty `GenerationTesterMixin` (VideoAR samples with its pipeline, not `generate`);
- `utils/test_configuration_utils.py`: `config_common_kwargs`, non-default values of `PreTrainedConfig`'s own fields.
"""

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
import transformers

PACKAGE = "transformers_upstream_tests"

_WRITTEN_BY_US = {
    "exporters/__init__.py": "",
    "exporters/test_export.py": "class ExportTesterMixin:\n    \"\"\"Not in the sdist: no export tests.\"\"\"\n",
    "generation/__init__.py": "",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    \"\"\"Not in the sdist; VideoAR has no `generate`.\"\"\"\n",
    "utils/__init__.py": "",
    "utils/test_configuration_utils.py": (
        "# every field PreTrainedConfig itself defines, with a value other than its default\n"
        "config_common_kwargs = {\n"
        "    'return_dict': False,\n"
        "    'output_hidden_states': True,\n"
        "    'dtype': 'float16',\n"
        "    'chunk_size_feed_forward': 5,\n"
        "    'architectures': ['SomeArchitecture'],\n"
        "    'id2label': {0: 'first', 1: 'second'},\n"
        "    'label2id': {'first': 0, 'second': 1},\n"
        "    'problem_type': 'regression',\n"
        "}\n"
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("VIDEOAR_UPSTREAM_CACHE", Path.home() / ".cache" / "videoar-hf" / "upstream"))


def transformers_tests():
    """Import `transformers_upstream_tests` for the installed transformers, downloading it once."""
    version = transformers.__version__
    root = cache_root() / f"transformers-{version}"
    package = root / PACKAGE
    if not (package / "test_modeling_common.py").is_file():
        _download_tests(version, root)
    for relative, text in _WRITTEN_BY_US.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(PACKAGE)


def _download_tests(version: str, root: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                   f"transformers=={version}", "-d", tmp]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        archives = list(Path(tmp).glob("transformers-*.tar.gz"))
        if result.returncode != 0 or not archives:
            message = f"could not download the transformers {version} sdist: {result.stderr.strip()[-300:]}"
            if os.environ.get("CI"):
                raise RuntimeError(message)
            pytest.skip(message)  # offline developer machine; CI always runs them
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root))
        with tarfile.open(archives[0]) as archive:
            members = [m for m in archive.getmembers() if m.name.split("/")[1:2] == ["tests"] and m.isfile()]
            archive.extractall(staging, members=members, filter="data")
        tests = staging / archives[0].name.removesuffix(".tar.gz") / "tests"
        (tests / "__init__.py").touch()
        tests.rename(root / PACKAGE)  # one rename: a half-unpacked copy is never imported
