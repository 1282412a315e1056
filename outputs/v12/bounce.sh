#!/usr/bin/env bash
# session 23: stage III on tau 2, after rebuild.sh
set -euo pipefail
root=/work/main; here=$root/examples/shapes; work=$root/outputs/shapes; tau4=$work/shapes_tau4
export PATH=$root/.venv/bin:$PATH
while pgrep -f outputs/v12/rebuild.sh > /dev/null; do sleep 20; done
[ -d "$work/transformer_tau2/pipeline" ]
common=(--dataset shapes --mixed_precision no --report_to tensorboard --resume_from_checkpoint latest)
transformer=(--precompute --checkpointing_steps 100 --logging_steps 25)
encoders=(--tokenizer "$work/tokenizer_tau2/tokenizer" --text_encoder "$tau4/text_encoder" --text_tokenizer "$tau4/tokenizer")
date
[ -d "$work/transformer_bounce_tau2/pipeline" ] || python "$root/examples/train_videoar.py" "${common[@]}" "${transformer[@]}" \
  "${encoders[@]}" --seed 1 --num_clips 2048 --shapes_bounce --shapes_mid_path_share 0.5 \
  --pretrained_transformer "$work/transformer_tau2/pipeline/transformer" \
  --stages "$here/stages_transformer_bounce_tau2.yaml" --output_dir "$work/transformer_bounce_tau2"
date
