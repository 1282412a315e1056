#!/usr/bin/env bash
# recipe_f4.sh on a GPU machine that has PyTorch, transformers, accelerate and peft but no network and no diffusers,
# with little room to carry files (how the f = 4 runs of TUNING.md, session 34, were made).
#   bash examples/shapes/offline_gpu.sh prepare   # here, with network: writes .gpu/ (about 1.9 MB)
#   bash examples/shapes/offline_gpu.sh run OUT   # there, from the repository root, with .gpu/ copied along
# `run` resumes the recipe in outputs/f4 and packs each result into OUT as it is ready (tar files split under 15 MiB,
# text encoder left out: it is the base model's), so a run stopped at a time limit still returns what it finished.
# BASE (default: the shipped folder) is the pipeline recipe_f4.sh grows. The shipped run (TUNING.md, session 36) grew
# the f = 8 model that shipped until 2026-12-04, then in that folder, with TOKENIZER=examples/shapes/f4-tokenizer; both
# are in commit b137fdb, and the tree that travels must stay under 64 MiB (the shipped f = 8 tokenizer stayed behind).
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

run() {
  local out="$1" site=/tmp/videoar_site work="$root/outputs/f4" base="${BASE:-$root/src/videoar_hf/shipped/videoar-shapes}"
  mkdir -p "$out" "$work"
  if [ ! -d $site/diffusers ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target $site "$gpu"/*.whl || return 3
    tar xJf "$gpu/diffusers.tar.xz" -C $site && cp -r "$gpu/site/av" $site/
    # no ffmpeg there: the trainers' sample videos are skipped
    printf '\ndef export_to_video(video_frames, output_video_path=None, fps=10, **kwargs):\n    return output_video_path\n' \
      >> $site/diffusers/utils/export_utils.py
  fi
  export PYTHONPATH=$site:$root/src PYTHONUNBUFFERED=1 TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 HF_HUB_OFFLINE=1
  python3 -c "import torch, videoar_hf; print(torch.__version__, torch.cuda.get_device_name(0))" || return 3
  pack() {  # folder, name: one tar in $out, split under 15 MiB a file, once
    [ -d "$1" ] && [ ! -e "/tmp/packed.$2" ] || return 0
    tar cf "/tmp/$2.tar" --exclude=text_encoder -C "$(dirname "$1")" "$(basename "$1")" \
      && split -b 15m -d "/tmp/$2.tar" "$out/$2.tar." && touch "/tmp/packed.$2"
  }
  watch() {
    while true; do
      pack "$work/tokenizer_clips/tokenizer" tokenizer; pack "$work/transformer_clips/pipeline/transformer" clips
      pack "$work/transformer_bounce/pipeline/transformer" bounce; pack "$work/export" export
      cp "$work/times.log" "$out/" 2>/dev/null; sleep 5
    done
  }
  watch & local watcher=$!
  PRECISION=${PRECISION:-bf16} bash "$root/examples/shapes/recipe_f4.sh" "$work" "$base" "$work/export" > "$out/log.txt" 2>&1
  local rc=$?
  kill $watcher; pack "$work/export" export; cp "$work/times.log" "$out/"
  grep -E "Stage|step [0-9]+/[0-9]+ loss|Error|error" "$out/log.txt" | tail -30
  return $rc
}

case "${1:-}" in
  prepare) prepare ;;
  run) run "${2:?run needs an output folder}" ;;
  *) echo "usage: $0 prepare | run OUT" >&2; exit 2 ;;
esac
