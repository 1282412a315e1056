"""Run a script under FSDP2 on CPU processes over gloo: a test helper, never used by the library.

accelerate enables FSDP only on GPU backends: launched with `ACCELERATE_USE_CPU=1` it joins the processes into a
MULTI_CPU (DDP) group and drops the FSDP plugin it was given, and the training scripts then refuse to start (they
were asked for FSDP). This wrapper marks the group FSDP again after accelerate's own set-up, with the plugin
accelerate built from the launcher's `--fsdp_*` flags, and runs the script:

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --use_fsdp --fsdp_version 2 ... \\
        tests/fsdp_on_cpu.py examples/train_videoar.py --output_dir ...
"""

import runpy
import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_original_init = AcceleratorState.__init__


def _init_keeping_fsdp(self, *args, fsdp_plugin=None, **kwargs):
    _original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        # both shared states: every later AcceleratorState() copies PartialState's type over its own
        PartialState._shared_state["distributed_type"] = self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


if __name__ == "__main__":
    AcceleratorState.__init__ = _init_keeping_fsdp
    sys.argv = sys.argv[1:]
    sys.path.insert(0, str(__import__("pathlib").Path(sys.argv[0]).resolve().parent))
    runpy.run_path(sys.argv[0], run_name="__main__")
