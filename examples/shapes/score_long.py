#!/usr/bin/env python
"""Score a model's long bouncing videos on prompts the evaluator's long suite does not use, so that a candidate can be
chosen without looking at the acceptance numbers: case i is the long suite's triple cycle at index i and seed
50,000 + i, for i from START (default 50, past the suite's 50). Prints the long suite's frame scores, bounce split by
axis, and writes every case's scores to OUTPUT as JSON, to pair two models case by case (TUNING.md, session 37). With
BASELINE, such a JSON of another model (or a `videoar eval` metrics.json, whose long suite is cases 0-49), it also
prints the paired differences and their standard errors.

    python examples/shapes/score_long.py MODEL [--start 50] [--count 24] [--device cuda] [--output scores.json]
    python examples/shapes/score_long.py MODEL --kwargs '{"context_frames": 12}'   # pipeline call arguments
    python examples/shapes/score_long.py MODEL --baseline shipped.json   # paired with shipped.json's cases
    python examples/shapes/score_long.py MODEL --start 0 --count 50 --baseline model_cards/assets/videoar-shapes-metrics.json
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
    parser.add_argument("--baseline", default=None, help="Another model's per-case JSON or metrics.json, to pair.")
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
    records = as_records(samples)
    if args.output:
        with open(args.output, "w") as file:
            json.dump(records, file)
    if args.baseline:
        with open(args.baseline) as file:
            baseline = json.load(file)
        if isinstance(baseline, dict):  # a metrics.json: its long suite's cases
            baseline = as_records(baseline["suites"]["long"]["samples"])
        print(json.dumps(paired(records, baseline)))


def as_records(samples: list[dict]) -> list[dict]:
    return [{"seed": s["seed"], **s["target"], **s["frames"]} for s in samples]


def paired(records: list[dict], baseline: list[dict]) -> dict:
    """Mean difference and its standard error, case by case, of the scores a candidate moves most; squares apart,
    the shape the finest scale rounds first."""
    base = {record["seed"]: record for record in baseline}
    if any(record["seed"] not in base for record in records):
        raise ValueError("--baseline must score every case scored here (the same or a wider --start .. --count).")
    result = {}
    for key in ("bounce", "shape_kept", "colour_kept"):
        diff = np.array([record[key] - base[record["seed"]][key] for record in records])
        result[f"{key}_diff"] = f"{100 * diff.mean():+.1f} ± {100 * diff.std(ddof=1) / np.sqrt(len(diff)):.1f}"
    squares = [record["shape_kept"] for record in records if record["shape"] == "square"]
    result["squares_shape_kept"] = round(float(np.mean(squares)), 4) if squares else None
    return result


if __name__ == "__main__":
    main()
