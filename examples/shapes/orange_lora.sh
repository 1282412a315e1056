#!/usr/bin/env bash
# The LoRA demonstration: teach the shipped VideoAR-Shapes model a colour it has never seen, orange (255, 128, 0), from
# 64 Shapes clips (three quarters orange; the rest in the original colours, so that those are not forgotten), and
# measure prompts of orange and of the original colours before and after with `videoar eval`.
# CPU, fixed seeds; re-running continues from the last checkpoint.
#   bash examples/shapes/orange_lora.sh [work_dir] [base_pipeline_folder]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-$root/outputs/shapes/orange_lora}"
base=() train_base=()  # the shipped model, unless a base pipeline folder is given
if [ -n "${2:-}" ]; then base=(--model "$2"); train_base=(--pretrained_model "$2"); fi
orange=orange=255,128,0
# 1000 steps: on the tau-2 base, 600 left orange at 75 % with the loss still falling (TUNING.md, session 24); why most
# of them are first frames: stages_lora_f4.yaml
[ -d "$work/adapter" ] || python "$root/examples/train_lora.py" "${train_base[@]}" --dataset shapes \
  --shapes_new_colours "$orange" --shapes_new_colour_share 0.75 --num_clips 64 --precompute \
  --stages "$root/examples/shapes/stages_lora_f4.yaml" --rank 16 --seed 0 --mixed_precision no \
  --report_to tensorboard --checkpointing_steps 100 --resume_from_checkpoint latest \
  --validation_prompts "an orange circle moving left" --output_dir "$work"
videoar eval "${base[@]}" --new-colours "$orange" --suites train new_colours -o "$work/eval_base"
videoar eval "${base[@]}" --new-colours "$orange" --suites train new_colours --lora "$work/adapter" -o "$work/eval_lora"
