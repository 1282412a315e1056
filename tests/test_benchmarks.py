"""The benchmark suite's counting parts, which are exact (its timings are never asserted: the machine is shared)."""

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def load_benchmark(name: str = "run"):
    """A script of `benchmarks/` as a module (it imports its neighbours, so the folder is on the path meanwhile)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_forward_passes_against_next_token_decoding():
    steps = load_benchmark().steps_section()
    # 5 latent frames x 4 scales against 5 x 8 x 8 tokens; the paper's UCF-101 setting: 5 x 6 against 320 (docs/method.md §1)
    assert steps["shipped"] == {"videoar": 20, "next_token": 320, "ratio": 16.0}
    assert steps["ucf101"]["videoar"] == 30 and steps["ucf101"]["next_token"] == 320


def test_the_report_marks_each_target():
    run = load_benchmark()
    rows = [dict(frames=n, seconds=n / 10, seconds_per_frame=0.1, peak_mb=100.0) for n in (17, 129)]
    results = {
        "steps": {"ucf101": {"ratio": 10.67}},
        "speed": {"shipped": {"ratio": 6.0}, "mid": {"ratio": 8.0}},
        "diffusion": {"shipped": {"ratio": 5.5}, "mid": {"ratio": 4.0}},
        "peak": {"share_of_fp32_peak": 0.5},
        "growth": {"window": rows},
        "shipped": {"seconds_per_video": 0.5},
    }
    verdicts = {name: passed for name, _, _, passed in run.verdicts(results)}
    assert verdicts["speed vs next-token AR, shipped size"] and not verdicts["speed vs next-token AR, ~100M"]
    assert not verdicts["speed vs 50-step Wan diffusion, mid size"]
    assert verdicts["growth with window: peak memory 129 / 17"]


def test_generate_speed_reports_the_saving_of_guidance_frames_against_every_frame_guided():
    result = load_benchmark("generate_speed").main(["--num_frames", "9", "--runs", "1", "--every_frame_guided"])
    assert result["video"] == "9x64x64" and result["runs"] == 1
    assert result["every_frame_guided_s_median"] > 0 and result["speedup_over_every_frame_guided"] > 0
