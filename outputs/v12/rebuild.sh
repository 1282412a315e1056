#!/usr/bin/env bash
# session 23: rebuild the tau-2 chain (what recipe.sh's tau-2 part runs), starting from the shipped tau-4 model
set -euo pipefail
root=/work/main; here=$root/examples/shapes; work=$root/outputs/shapes; tau4=$work/shapes_tau4
export PATH=$root/.venv/bin:$PATH
common=(--dataset shapes --mixed_precision no --report_to tensorboard --resume_from_checkpoint latest)
tokenizer=(--num_clips 100000 --entropy_weight 0 --foreground_weight 4 --weight_decay 0 --checkpointing_steps 250
  --logging_steps 50 --colour_mix_prob 0.3)
[ -d "$work/tokenizer_tau2/tokenizer" ] || python "$root/examples/train_tokenizer.py" "${common[@]}" "${tokenizer[@]}" \
  --seed 5 --foreground_dilation 2 --pretrained_tokenizer "$tau4/video_tokenizer" \
  --tokenizer_config '{"temporal_compression_ratio": 2}' --stages "$here/stages_tokenizer_tau2.yaml" \
  --output_dir "$work/tokenizer_tau2"
date
transformer=(--precompute --checkpointing_steps 100 --logging_steps 25)
encoders=(--tokenizer "$work/tokenizer_tau2/tokenizer" --text_encoder "$tau4/text_encoder" --text_tokenizer "$tau4/tokenizer")
[ -d "$work/transformer_tau2/pipeline" ] || python "$root/examples/train_videoar.py" "${common[@]}" "${transformer[@]}" \
  "${encoders[@]}" --seed 0 --num_clips 3072 --pretrained_transformer "$tau4/transformer" \
  --stages "$here/stages_transformer_tau2.yaml" --output_dir "$work/transformer_tau2"
date
