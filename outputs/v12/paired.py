"""Paired per-video difference of two long-suite result files: mean ± s.e., videos better / worse."""
import json, math, sys
a, b = (json.load(open(f))['samples'] for f in sys.argv[1:3])
assert [x['seed'] for x in a] == [x['seed'] for x in b]
for key in ('bounce', 'shape_kept', 'colour_kept', 'first_error_frame'):
    d = [x['frames'][key] - y['frames'][key] for x, y in zip(a, b)]
    m = sum(d) / len(d); se = math.sqrt(sum((v - m) ** 2 for v in d) / (len(d) - 1) / len(d))
    scale = 1 if key == 'first_error_frame' else 100
    print(f"{key}: {m*scale:+.1f} ± {se*scale:.1f}, better {sum(v > 0 for v in d)}, worse {sum(v < 0 for v in d)}")
