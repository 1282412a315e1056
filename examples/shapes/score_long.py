#!/usr/bin/env python
"""Score a model's long bouncing videos on prompts the evaluator's long suite does not use, so that a candidate can be
chosen without looking at the acceptance numbers: case i is the long suite's triple cycle at index i and seed
50,000 + i, for i from START (default 50, past the suite's 50). Prints the long suite's frame scores, bounce split by
axis, and writes every case's scores to OUTPUT as JSON, to pair two models case by case (TUNING.md, session 37).

    python examples/shapes/score_long.py MODEL [--start 50] [--count 24] [--device cuda] [--output scores.json]
    python examples/shapes/score_long.py MODEL --kwargs '{"context_frames": 12}'   # pipeline call arguments
"""

import argparse
import json

import numpy as np

from videoar_hf import VideoARPipeline
from videoar_hf.evaluation import evaluate_pipeline, long_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="Pipeline folder.")
    parser.add_argument("--start", type=int, default=50, help="First case index (the long suite uses 0-49).")
    parser.add_argument("--count", type=int, default=24, help="Cases.")
    parser.add_argument("--num_frames", type=int, default=129)
    parser.add_argument("--device", default=None, help="e.g. cuda (default: where the pipeline loads).")
    parser.add_argument("--kwargs", default="{}", help="Extra pipeline call arguments, as JSON.")
    parser.add_argument("--output", default=None, help="Where the per-case JSON goes (default: not written).")
    args = parser.parse_args()
    kwargs = json.loads(args.kwargs)

    pipe = VideoARPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    if args.device:
        pipe.to(args.device)
    cases = long_suite(args.start + args.count).cases[args.start :]  # the suite's cycle, continued past its 50

    def generate(*positional, **options):
        return pipe(*positional, **{**options, **kwargs})

    result = evaluate_pipeline(generate, triples=[t for t, _ in cases], seeds=[s for _, s in cases],
                               num_frames=args.num_frames, description="long")  # fmt: skip
    metrics, samples = result["metrics"], result["samples"]
    by_axis = {axis: np.mean([s["frames"]["bounce"] for s in samples if s["target"]["motion"] in motions])
               for axis, motions in (("horizontal", ("left", "right")), ("vertical", ("up", "down")))}  # fmt: skip
    print(json.dumps({"model": args.model, "kwargs": kwargs, "cases": f"{args.start}-{args.start + args.count - 1}",
                      **{k: round(metrics[k], 4) for k in ("bounce", "shape_kept", "colour_kept", "one_object",
                                                             "first_error_frame")},
                      **{f"bounce_{axis}": round(float(v), 4) for axis, v in by_axis.items()}}))  # fmt: skip
    if args.output:
        with open(args.output, "w") as file:
            json.dump([{"seed": s["seed"], **s["target"], **s["frames"]} for s in samples], file)


if __name__ == "__main__":
    main()
