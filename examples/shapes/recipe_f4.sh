#!/usr/bin/env bash
# VideoAR-Shapes at f = 4 (16 x 16 latent cells, tau 2), the shipped model since 2026-12-04: the tokenizer (stills, then
# clips) under the f = 8 one, fp32; then the f = 8 transformer grown onto it (first frames, 17-frame clips, bouncing
# 33-frame clips), then the bf16 export. Why f = 4: the f = 8 tokenizer alone caps continuation shape at 93 % and
# long-video shape at 89 %; f = 4 keeps 100 % and 95 % (TUNING.md, sessions 30-32).
#   bash examples/shapes/recipe_f4.sh WORK_DIR BASE_PIPELINE EXPORT_DIR
# BASE_PIPELINE is the f = 8 model (recipe.sh's shapes_f8): its tokenizer teaches, its transformer is grown, its text
# encoder is kept. The shipped run: the tokenizer stages on a 2-core CPU (24 + 48 minutes), the first three transformer
# stages on one H200 with PRECISION=bf16 (8.3 minutes; offline_gpu.sh), the last on the 2-core CPU (AVX-512 BF16) with
# PRECISION=bf16 (1 h 51 min). TOKENIZER=path skips the tokenizer stages.
# Re-running continues from the last checkpoints. PRECISION (default no) is passed to the transformer stages as
# --mixed_precision; SMOKE=1 runs every stage for 2 steps on 64 clips, to check the chain end to end before paying.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$1"; base="$2"; export_dir="$3"
mkdir -p "$work"
stages="$here"
clips() { if [ "${SMOKE:-0}" = 1 ]; then echo 64; else echo "$1"; fi; }
if [ "${SMOKE:-0}" = 1 ]; then
  stages="$work/smoke_stages"; mkdir -p "$stages"
  for file in "$here"/stages_*.yaml; do
    sed -E 's/([{ ,])steps: [0-9]+/\1steps: 2/; s/warmup_steps: [0-9]+/warmup_steps: 1/' "$file" > "$stages/$(basename "$file")"
  done
fi
step() { echo "[$(date +%T)] $1" | tee -a "$work/times.log"; }
common=(--dataset shapes --report_to tensorboard --resume_from_checkpoint latest)

# the tokenizer: the recipe's losses, 2 px past the object's edge weighed too, from scratch at f = 4, its latents pooled
# to 8 x 8 pulled to the base model's f = 8 ones, so its first four scales' bits are the bits the base transformer knows
tokenizer_config='{"latent_channels": 32, "base_channels": 16, "channel_multipliers": [1, 2, 4], "num_res_blocks": 1,
  "spatial_compression_ratio": 4, "temporal_compression_ratio": 2, "scale_schedule": [1, 2, 4, 8, 16],
  "norm_num_groups": 8, "sample_size": 64}'
tokenizer=(--mixed_precision no --seed 0 --num_clips "$(clips 100000)" --entropy_weight 0 --foreground_weight 4
  --foreground_dilation 2 --weight_decay 0 --checkpointing_steps 500 --logging_steps 50 --colour_mix_prob 0.3)
teacher=(--teacher_tokenizer "$base/video_tokenizer" --teacher_weight 1)
tokenizer_dir="${TOKENIZER:-$work/tokenizer_clips/tokenizer}"
if [ ! -d "$tokenizer_dir" ]; then
  step "tokenizer: stills"
  [ -d "$work/tokenizer_stills/tokenizer" ] || python "$root/examples/train_tokenizer.py" "${common[@]}" "${tokenizer[@]}" \
    --tokenizer_config "$tokenizer_config" "${teacher[@]}" --stages "$stages/stages_tokenizer_f4_stills.yaml" --output_dir "$work/tokenizer_stills"
  step "tokenizer: clips"
  [ -d "$work/tokenizer_clips/tokenizer" ] || python "$root/examples/train_tokenizer.py" "${common[@]}" "${tokenizer[@]}" \
    --pretrained_tokenizer "$work/tokenizer_stills/tokenizer" --reinflate "${teacher[@]}" --stages "$stages/stages_tokenizer_f4_video.yaml" \
    --output_dir "$work/tokenizer_clips"
fi

# the transformer, grown from the base model's (every weight kept, a 16 x 16 scale added): on the taught tokenizer's
# first frames it predicts the four coarse scales' bits 85-96 % right before any step (TUNING.md, session 34)
transformer=(--mixed_precision "${PRECISION:-no}" --precompute --checkpointing_steps 400 --logging_steps 25
  --tokenizer "$tokenizer_dir" --text_encoder "$base/text_encoder" --text_tokenizer "$base/tokenizer")
step "transformer: stills"
[ -d "$work/transformer_stills/pipeline" ] || python "$root/examples/train_videoar.py" "${common[@]}" "${transformer[@]}" \
  --seed 0 --num_clips "$(clips 12288)" --pretrained_transformer "$base/transformer" \
  --stages "$stages/stages_transformer_f4_stills.yaml" --output_dir "$work/transformer_stills"
step "transformer: clips"
[ -d "$work/transformer_clips/pipeline" ] || python "$root/examples/train_videoar.py" "${common[@]}" "${transformer[@]}" \
  --seed 1 --num_clips "$(clips 8192)" --pretrained_transformer "$work/transformer_stills/pipeline/transformer" \
  --stages "$stages/stages_transformer_f4_clips.yaml" --output_dir "$work/transformer_clips"
step "transformer: bouncing clips"
[ -d "$work/transformer_bounce/pipeline" ] || python "$root/examples/train_videoar.py" "${common[@]}" "${transformer[@]}" \
  --seed 2 --num_clips "$(clips 4096)" --shapes_bounce --shapes_mid_path_share 0.5 \
  --pretrained_transformer "$work/transformer_clips/pipeline/transformer" \
  --transformer_config '{"frame_mask_window": 8, "flip_rate_max": 0.05, "flip_rate_delta": 0.005}' \
  --stages "$stages/stages_transformer_f4_bounce.yaml" --output_dir "$work/transformer_bounce"

# long videos re-encode 8 latent frames to start each window, and only the first latent frame is guided, as for the
# f = 8 model (TUNING.md, sessions 20 and 23)
export_options=(--context_frames 8 --guidance_frames 1)
gpu_export="$work/shapes_f4_gpu"  # shipped on 2026-12-04
step "export of the GPU stages"
[ -d "$gpu_export" ] || python "$here/export_shipped.py" "$work/transformer_bounce/pipeline" "$gpu_export" "${export_options[@]}"

# stage III once more from that bf16 export, gently (lr 5e-5) on the 2-core CPU, half the clips mid-path: long bounce
# 68.4 -> 73.6 %, long shape kept 89.6 -> 91.1 % (TUNING.md, sessions 39-42)
step "transformer: bouncing clips, gently"
[ -d "$work/transformer_bounce_cpu/pipeline" ] || python "$root/examples/train_videoar.py" "${common[@]}" \
  --mixed_precision "${PRECISION:-no}" --precompute --checkpointing_steps 20 --logging_steps 5 \
  --tokenizer "$gpu_export/video_tokenizer" --text_encoder "$gpu_export/text_encoder" --text_tokenizer "$gpu_export/tokenizer" \
  --seed 8 --num_clips "$(clips 1024)" --shapes_bounce --shapes_mid_path_share 0.5 \
  --pretrained_transformer "$gpu_export/transformer" \
  --stages "$stages/stages_transformer_f4_bounce_cpu.yaml" --output_dir "$work/transformer_bounce_cpu"
# sampling defaults: history guidance 1.25 on the last latent frame past the trained length, and per-bit top-p 0.9:
# long bounce 73.6 -> 90.1 %, long shape kept 91.1 -> 91.2 % (TUNING.md, sessions 47-48)
step "export"
python "$here/export_shipped.py" "$work/transformer_bounce_cpu/pipeline" "$export_dir" "${export_options[@]}" \
  --history_guidance_scale 1.25 --history_frames 1 --history_guidance_start 17 --top_p 0.9
step "done"
