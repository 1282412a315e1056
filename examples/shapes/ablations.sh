#!/usr/bin/env bash
# The paper's ablation ladder at Shapes scale (docs/ablations.md): five transformers of one size, seed, data and
# budget, each adding one of the paper's techniques, scored on 65- and 129-frame bouncing videos.
# Re-running continues from the last checkpoints and skips finished runs and evaluations.
#   bash examples/shapes/ablations.sh [work_dir]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="${1:-$root/outputs/ablations}"
shipped="$root/src/videoar_hf/shipped/videoar-shapes"
model='"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4'
# row name, then the transformer config fields that differ (base: no temporal RoPE axis, no CFEC, no frame mask)
rows=(
  "base|$model, \"rope_axes_dim\": [0, 32, 32], \"error_correction\": false, \"frame_mask_prob\": 0.0"
  "mst_rope|$model, \"error_correction\": false, \"frame_mask_prob\": 0.0"
  "time_cfec|$model, \"error_correction\": true, \"flip_rate_inheritance\": false, \"frame_mask_prob\": 0.0"
  "inheritance|$model, \"error_correction\": true, \"flip_rate_inheritance\": true, \"frame_mask_prob\": 0.0"
  "frame_mask|$model, \"error_correction\": true, \"flip_rate_inheritance\": true, \"frame_mask_prob\": 0.1"
)
mkdir -p "$work/latent_cache"
for row in "${rows[@]}"; do
  name="${row%%|*}"
  mkdir -p "$work/$name"
  # every row trains on the same clips, so the latents are encoded once
  [ -e "$work/$name/latent_cache" ] || ln -s "$work/latent_cache" "$work/$name/latent_cache"
  [ -d "$work/$name/pipeline" ] || python "$root/examples/train_videoar.py" --dataset shapes --shapes_bounce \
    --num_clips 2048 --seed 0 --mixed_precision bf16 --report_to tensorboard --resume_from_checkpoint latest \
    --precompute --tokenizer "$shipped/video_tokenizer" --text_encoder "$shipped/text_encoder" \
    --text_tokenizer "$shipped/tokenizer" --transformer_config "{${row#*|}}" --stages "$here/stages_ablation.yaml" \
    --checkpointing_steps 250 --logging_steps 50 --output_dir "$work/$name"
done
for row in "${rows[@]}"; do
  name="${row%%|*}"
  for frames in 65 129; do
    [ -f "$work/$name/eval_$frames/metrics.json" ] || videoar eval --model "$work/$name/pipeline" --suites long \
      --long-num-frames "$frames" --long-prompts 50 -o "$work/$name/eval_$frames"
  done
done
python "$here/ablation_table.py" "$work" "${rows[@]%%|*}"
