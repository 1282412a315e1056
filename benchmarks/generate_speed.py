"""Load time and generation time of one video, after loading: the shipped model's speed target (issue 4).

    python benchmarks/generate_speed.py                       # the shipped VideoAR-Shapes model, 17x64x64
    python benchmarks/generate_speed.py --model path/or/hub-id --num_frames 17 --height 64 --width 64 --runs 5
    python benchmarks/generate_speed.py --num_frames 129 --runs 3 --every_frame_guided  # guidance_frames' saving

Loading is timed once, cold in this process. Generation is timed `--runs` times after one warm-up call, each with
its own seed, and the median is reported: this machine is shared, so the median is steadier than the mean. The
output is one JSON object (also written to `--output` if given). With `--every_frame_guided`, the same seeds are timed
again with every latent frame guided (the paper's sampling), in the same process, and the ratio of the medians is
reported: what the model's `guidance_frames` saves, as frames past it skip the unconditional pass.
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch

from videoar_hf import VideoARPipeline, shipped_model_path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Pipeline folder or Hub id (default: the shipped model).")
    parser.add_argument("--prompt", default="a red circle moving left")
    parser.add_argument("--num_frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5, help="Timed generations after the warm-up.")
    parser.add_argument("--output", default=None, help="Also write the JSON here.")
    parser.add_argument("--every_frame_guided", action="store_true",
                        help="Also time every latent frame guided, and report the ratio to the model's default.")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}.")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    model = args.model or str(shipped_model_path())

    start = time.perf_counter()
    pipe = VideoARPipeline.from_pretrained(model)
    load_s = time.perf_counter() - start
    pipe.set_progress_bar_config(disable=True)

    def generate(seed: int, **options) -> float:
        start = time.perf_counter()
        pipe(
            args.prompt, num_frames=args.num_frames, height=args.height, width=args.width,
            generator=torch.Generator().manual_seed(seed), output_type="np", **options,
        )  # fmt: skip
        return time.perf_counter() - start

    generate(0)  # warm-up: first-call allocations and kernel selection
    times = [generate(seed) for seed in range(1, args.runs + 1)]
    extra = {}
    if args.every_frame_guided:
        every = {"guidance_frames": pipe.video_tokenizer.num_latent_frames(args.num_frames)}
        guided_times = [generate(seed, **every) for seed in range(1, args.runs + 1)]
        extra = {"every_frame_guided_s_median": round(statistics.median(guided_times), 3),
                 "speedup_over_every_frame_guided": round(statistics.median(guided_times) / statistics.median(times), 2)}  # fmt: skip
    result = {
        "model": model,
        "video": f"{args.num_frames}x{args.height}x{args.width}",
        "load_s": round(load_s, 3),
        "generate_s_median": round(statistics.median(times), 3),
        "generate_s_min": round(min(times), 3),
        "runs": args.runs,
        **extra,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    if args.output:
        with open(args.output, "w") as file:
            json.dump(result, file, indent=2)
    return result


if __name__ == "__main__":
    main()
