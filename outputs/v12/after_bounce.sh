#!/usr/bin/env bash
# session 23: after bounce.sh, export (context 2 for now) and pick context_frames on the long prompts eval does not use
set -euo pipefail
root=/work/main; work=$root/outputs/shapes; v=$root/outputs/v12
export PATH=$root/.venv/bin:$PATH
while pgrep -f outputs/v12/bounce.sh > /dev/null; do sleep 20; done
[ -d "$work/transformer_bounce_tau2/pipeline" ]
[ -d "$v/ship" ] || python "$root/examples/shapes/export_shipped.py" "$work/transformer_bounce_tau2/pipeline" "$v/ship" \
  --context_frames 2 --guidance_frames 1
for ctx in 8 4 2; do
  [ -f "$v/long_ctx$ctx.json" ] || { date; python "$v/long_ctx.py" "$v/ship" "$ctx" "$v/long_ctx$ctx.json"; }
done
date
