#!/usr/bin/env bash
# The one GPU check of the project (≤ 8 min on one H100/H200): what `sslam doctor` says, Stage-1 and Stage-2
# ViT-B bf16 throughput and MFU at 12 clips × 16 clones (eager and torch.compile), peak memory, bf16-vs-fp32
# loss agreement, and a 200-update mini pretraining through `sslam pretrain` on the synthetic corpus.
#
#   bash benchmarks/device_check.sh            # from the repository root, with the project's venv active
#
# Results go to $OUT (the device tool's folder) or ./device-check: one log and one JSON per part; the figures
# to compare with are in the README ("Benchmarks": ≥ 300 Stage-1 and ≥ 260 Stage-2 clips/s on an H100).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
started=$(date +%s)
part() { echo; echo "== $1 ($(( $(date +%s) - started )) s)"; }

part "doctor"
$PY -m sslam.cli doctor 2>&1 | tee "$OUT/doctor.log"

part "pretraining step, ViT-B, 12 clips x 16 clones, bf16, eager"
$PY -m benchmarks.pretrain_step --preset vitb --batch 12 --clones 16 --device cuda --dtype bf16 \
    --steps 20 --warmup 5 2>&1 | tee "$OUT/step_eager.log" | tail -3
tail -1 "$OUT/step_eager.log" > "$OUT/step_eager.json"

part "pretraining step, ViT-B, 12 clips x 16 clones, bf16, torch.compile"
timeout 300 $PY -m benchmarks.pretrain_step --preset vitb --batch 12 --clones 16 --device cuda --dtype bf16 \
    --steps 20 --warmup 5 --compile 2>&1 | tee "$OUT/step_compiled.log" | tail -3
tail -1 "$OUT/step_compiled.log" > "$OUT/step_compiled.json"

part "bf16 vs fp32 loss agreement, ViT-B"
$PY -m benchmarks.precision_agreement --preset vitb --batch 4 --clones 8 --device cuda 2>&1 \
    | tee "$OUT/precision.log" | tail -3
tail -1 "$OUT/precision.log" > "$OUT/precision.json"

part "mini pretraining: 200 Stage-1 updates of ViT-B on 10-s synthetic clips"
work=$(mktemp -d)
cat > "$work/study.yaml" <<EOF
study: {name: device-check, results: $work/results, seeds: [0], variants: [SSLAM], pretrain_dataset: pretrain,
        benchmarks: [poly], regimes: [linear]}
synthetic: {seed: 0, clip_seconds: 10.0, pretrain_clips: 384}
datasets:
  pretrain: {adapter: synthetic, options: {set: pretrain}, target_length: 1024, norm_mean: null, norm_std: null}
  poly: {adapter: synthetic, options: {set: poly}, target_length: 1024}
pretrain:
  stage1: {steps: 200, warmup_steps: 20, batch_size: 12, checkpoint_every: 100, log_every: 10, num_workers: 4}
evaluation: {benchmarks: {poly: {dataset: poly}}}
EOF
$PY -m sslam.cli synth --config "$work/study.yaml" --out "$work/synth" --sets pretrain > "$OUT/mini_synth.log" 2>&1
$PY -m sslam.cli cache build --manifest "$work/synth/pretrain/manifest.tsv" --out "$work/shard.h5" \
    --target-length 1024 --config "$work/study.yaml" > "$OUT/mini_cache.log" 2>&1
SSLAM_PROGRESS_SECONDS=10 $PY -m sslam.cli pretrain --config "$work/study.yaml" --stage 1 --out "$work/stage1" \
    --shards "$work/shard.h5" --device cuda --no-progress 2>&1 | tee "$OUT/mini_pretrain.log" | grep -E "\[stage|finished|error"
cp "$work/stage1/metrics.jsonl" "$OUT/mini_pretrain_metrics.jsonl" 2>/dev/null
$PY - "$OUT/mini_pretrain_metrics.jsonl" <<'EOF' | tee "$OUT/mini_pretrain.json"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(json.dumps({"updates": rows[-1]["step"], "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
                  "clips_per_s_last": rows[-1]["clips_per_s"], "finite": all(r["loss"] == r["loss"] for r in rows)}))
EOF
rm -rf "$work"
part "done"
