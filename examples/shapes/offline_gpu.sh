#!/usr/bin/env bash
# recipe_f4.sh on a GPU machine that has PyTorch, transformers, accelerate and peft but no network and no diffusers,
# with little room to carry files (how the f = 4 runs of TUNING.md, sessions 34 and 36, were made).
#   bash examples/shapes/offline_gpu.sh prepare      # here, with network: writes .gpu/ (about 1.9 MB)
#   bash examples/shapes/offline_gpu.sh run OUT      # there, from the repository root, with .gpu/ copied along
#   bash examples/shapes/offline_gpu.sh bounce OUT   # there: more bouncing clips from BASE alone, then scored there
# `run` resumes the recipe in outputs/f4 and packs each result into OUT as it is ready (tar files split under 15 MiB,
# text encoder left out: it is the base model's), so a run stopped at a time limit still returns what it finished.
# BASE (default: the shipped folder) is the pipeline recipe_f4.sh grows. The shipped run (TUNING.md, session 36) grew
# the f = 8 model that shipped until 2026-12-04, then in that folder, with TOKENIZER=examples/shapes/f4-tokenizer; both
# are in commit b137fdb, and the tree that travels must stay under 64 MiB (the shipped f = 8 tokenizer stayed behind).
# `bounce` is TUNING.md's next step for long-video bounce (session 37): stage III again, from BASE alone
# (stages_transformer_f4_bounce_more.yaml; it moves into recipe_f4.sh if its model ships), the bf16 export, then
# probe_turn_speed.py and score_long.py on BASE and on the export, and the export's full evaluation, all on the GPU.
# NAME (default more) names its work folder and tar, TRANSFORMER_CONFIG overrides the transformer's config as JSON
# (e.g. lower flip rates), MID_PATH_SHARE (default 0.5) is the share of clips that start mid-path, LEARNING_RATE
# (default 1.0e-4: from the shipped model 3e-4 cost long videos on the CPU, 5e-5 kept them; TUNING.md, sessions 39-40)
# the stage's peak learning rate; SMOKE=1 runs the same chain on this CPU for 2 steps on 64 clips.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
gpu="$root/.gpu"

prepare() {
  set -e
  local wheels; wheels="$(mktemp -d)"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$wheels" \
    diffusers==0.42.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 importlib_metadata==10.2.0
  mkdir -p "$gpu/site/av/video"
  cp "$wheels"/{datasets,dill,multiprocess,importlib_metadata}-*.whl "$gpu/"
  # diffusers without the pipelines and models of other projects (30 MB to 1 MB); what our imports need stays
  (cd "$wheels" && unzip -q diffusers-*.whl 'diffusers/*' && rm -rf diffusers/pipelines/*/ diffusers/modular_pipelines/*/ \
    diffusers/models/controlnets && find diffusers -name __pycache__ -prune -exec rm -rf {} + \
    && tar cJf "$gpu/diffusers.tar.xz" diffusers)
  # no PyAV wheel (35 MB): Shapes training decodes no files, so an import-only stand-in does
  printf 'VideoFrame = object\ntime_base = 1000000\n\n\ndef open(*args, **kwargs):\n    raise ImportError("PyAV is not installed")\n' > "$gpu/site/av/__init__.py"
  : > "$gpu/site/av/video/__init__.py"
  printf 'class VideoReformatter:\n    pass\n' > "$gpu/site/av/video/reformatter.py"
  rm -rf "$wheels"; du -sh "$gpu"
}

site() {  # the packages .gpu/ holds, installed once into /tmp, and the environment every mode runs in
  local site=/tmp/videoar_site
  if [ ! -d $site/diffusers ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target $site "$gpu"/*.whl || return 3
    tar xJf "$gpu/diffusers.tar.xz" -C $site && cp -r "$gpu/site/av" $site/
    # no ffmpeg there: the trainers' sample videos are skipped
    printf '\ndef export_to_video(video_frames, output_video_path=None, fps=10, **kwargs):\n    return output_video_path\n' \
      >> $site/diffusers/utils/export_utils.py
  fi
  export PYTHONPATH=$site:$root/src PYTHONUNBUFFERED=1 TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 HF_HUB_OFFLINE=1
  python3 -c "import torch, videoar_hf; print(torch.__version__, torch.cuda.get_device_name(0))" || return 3
}

pack() {  # folder, name, out: one tar in out, split under 15 MiB a file, once
  [ -d "$1" ] && [ ! -e "/tmp/packed.$2" ] || return 0
  tar cf "/tmp/$2.tar" --exclude=text_encoder -C "$(dirname "$1")" "$(basename "$1")" \
    && split -b 15m -d "/tmp/$2.tar" "$3/$2.tar." && touch "/tmp/packed.$2"
}

run() {
  local out="$1" work="$root/outputs/f4" base="${BASE:-$root/src/videoar_hf/shipped/videoar-shapes}"
  mkdir -p "$out" "$work"
  site || return 3
  watch() {
    while true; do
      pack "$work/tokenizer_clips/tokenizer" tokenizer "$out"; pack "$work/transformer_clips/pipeline/transformer" clips "$out"
      pack "$work/transformer_bounce/pipeline/transformer" bounce "$out"; pack "$work/export" export "$out"
      cp "$work/times.log" "$out/" 2>/dev/null; sleep 5
    done
  }
  watch & local watcher=$!
  PRECISION=${PRECISION:-bf16} bash "$root/examples/shapes/recipe_f4.sh" "$work" "$base" "$work/export" > "$out/log.txt" 2>&1
  local rc=$?
  kill $watcher; pack "$work/export" export "$out"; cp "$work/times.log" "$out/"
  grep -E "Stage|step [0-9]+/[0-9]+ loss|Error|error" "$out/log.txt" | tail -30
  return $rc
}

bounce() {
  local out="$1" name="${NAME:-more}" base="${BASE:-$root/src/videoar_hf/shipped/videoar-shapes}"
  local work="$root/outputs/f4_$name" config=()
  [ -z "${TRANSFORMER_CONFIG:-}" ] || config=(--transformer_config "$TRANSFORMER_CONFIG")
  local here="$root/examples/shapes" clips=8192 device=cuda count=48
  local edits="s/learning_rate: [0-9.e+-]+/learning_rate: ${LEARNING_RATE:-1.0e-4}/"
  if [ "${SMOKE:-0}" = 1 ]; then  # the whole chain on this CPU, in about 6 minutes
    work="$work-smoke" clips=64 device=cpu count=2
    edits="$edits; s/steps: [0-9]+/steps: 2/; s/warmup_steps: [0-9]+/warmup_steps: 1/"
  else
    site || return 3
  fi
  mkdir -p "$out" "$work"; rm -f "/tmp/packed.$name"
  local stages="$work/stages.yaml"
  sed -E "$edits" "$here/stages_transformer_f4_bounce_more.yaml" > "$stages"
  { date +%T; python "$root/examples/train_videoar.py" --dataset shapes --report_to tensorboard --resume_from_checkpoint latest \
      --mixed_precision "${PRECISION:-bf16}" --precompute --checkpointing_steps 400 --logging_steps 25 \
      --tokenizer "$base/video_tokenizer" --text_encoder "$base/text_encoder" --text_tokenizer "$base/tokenizer" \
      --pretrained_transformer "$base/transformer" --seed 8 --num_clips $clips --shapes_bounce \
      --shapes_mid_path_share "${MID_PATH_SHARE:-0.5}" "${config[@]}" --stages "$stages" --output_dir "$work/transformer" \
    && python "$here/export_shipped.py" "$work/transformer/pipeline" "$work/export" --context_frames 8 --guidance_frames 1
  } > "$out/log.txt" 2>&1 || { tail -20 "$out/log.txt"; return 1; }
  pack "$work/export" "$name" "$out"
  for model in "$base" "$work/export"; do
    echo "$model"; python "$here/probe_turn_speed.py" "$model" $((count / 2)) $device
    python "$here/score_long.py" "$model" --count $count --device $device --output "$out/score_$(basename "$model").json"
  done | tee "$out/score.txt"
  python -c "import sys; from videoar_hf.evaluation import run_evaluation; run_evaluation(sys.argv[1], sys.argv[2], \
    device=sys.argv[3], progress=False, **({'num_prompts': 2, 'seeds_per_held_out': 1, 'long_prompts': 1} if sys.argv[4] == '1' else {}))" \
    "$work/export" "$out/eval" $device "${SMOKE:-0}" && cat "$out/eval/metrics.md"
  date +%T
}

case "${1:-}" in
  prepare) prepare ;;
  run) run "${2:?run needs an output folder}" ;;
  bounce) bounce "${2:?bounce needs an output folder}" ;;
  *) echo "usage: $0 prepare | run OUT | bounce OUT" >&2; exit 2 ;;
esac
