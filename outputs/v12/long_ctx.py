"""The long suite's other 50 prompts (indices 50-99: seeds 50,050-50,099, which `videoar eval` does not use), with a
given context_frames.   python long_ctx.py PIPE CONTEXT OUT.json"""
import json, sys
from videoar_hf import VideoARPipeline
from videoar_hf.evaluation import evaluate_pipeline, _cycling_suite, training_triples, LONG_SEED_START

pipe_dir, context, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pipe = VideoARPipeline.from_pretrained(pipe_dir)
pipe.set_progress_bar_config(disable=True)
pipe.transformer.config.context_frames = context
suite = _cycling_suite("long", training_triples(), 100, LONG_SEED_START)
triples, seeds = suite.triples[50:], suite.seeds[50:]
assert seeds[0] == 50_050 and seeds[-1] == 50_099
result = evaluate_pipeline(pipe, triples=triples, seeds=seeds, num_frames=129, batch_size=8, progress=False, description="long")
result.pop("videos", None)
json.dump(result, open(out, "w"), indent=1)
m = result["metrics"]
print(context, {k: m.get(k) for k in ("one_object", "colour_kept", "shape_kept", "bounce", "first_error_frame")})
