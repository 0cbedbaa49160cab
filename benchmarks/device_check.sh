#!/usr/bin/env bash
# The one GPU check of the project (≤ 8 min on one H100/H200): what `sslam doctor` says; the host side of a
# ViT-B update in all four loops (host CPU ms per update, device syncs, the share of time the GPU waits for the
# host), eager and compiled; Stage-1 and Stage-2 ViT-B bf16 throughput and MFU at 12 clips × 16 clones (eager
# and compiled); bf16-vs-fp32 loss agreement; and a 200-update mini pretraining through `sslam pretrain` (which
# compiles its step, the CUDA default) on the synthetic corpus.
#
#   bash benchmarks/device_check.sh            # from the repository root, with the project's venv active
#
# Results go to $OUT (the device tool's folder) or ./device-check: one log and one JSON per part; the figures
# to compare with are in the README ("Benchmarks": ≥ 300 Stage-1 and ≥ 260 Stage-2 clips/s on an H100) and in
# docs/performance.md (host overhead). Every part has its own time limit and the whole script stops starting
# parts after 470 s, so that one run stays under 8 minutes; a part cut short says so in its log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
started=$(date +%s)
BUDGET=470
part() { echo; echo "== $1 ($(( $(date +%s) - started )) s)"; }
# limited SECONDS CMD...: run CMD for at most SECONDS, and never past the budget.
limited() {
    local left=$(( BUDGET - ($(date +%s) - started) )) want=$1; shift
    if (( left < 20 )); then echo "skipped: the 8-minute budget is spent"; return 0; fi
    timeout $(( want < left ? want : left )) "$@" || echo "ended early (exit $?)"
}

part "doctor"
limited 30 $PY -m sslam.cli doctor 2>&1 | tee "$OUT/doctor.log"

part "host side of an update, ViT-B, bf16, eager: Stage 1, Stage 2, fine-tuning, linear probe"
limited 120 $PY -m benchmarks.host_overhead --preset vitb --device cuda --dtype bf16 --updates 10 --warmup 3 \
    --count-updates 2 2>&1 | tee "$OUT/host_eager.log" | tail -5
tail -1 "$OUT/host_eager.log" > "$OUT/host_eager.json"

part "pretraining step, ViT-B, 12 clips x 16 clones, bf16, eager"
limited 60 $PY -m benchmarks.pretrain_step --preset vitb --batch 12 --clones 16 --device cuda --dtype bf16 \
    --steps 15 --warmup 5 2>&1 | tee "$OUT/step_eager.log" | tail -3
tail -1 "$OUT/step_eager.log" > "$OUT/step_eager.json"

part "pretraining step, ViT-B, 12 clips x 16 clones, bf16, compiled step"
limited 180 $PY -m benchmarks.pretrain_step --preset vitb --batch 12 --clones 16 --device cuda --dtype bf16 \
    --steps 15 --warmup 5 --compile 2>&1 | tee "$OUT/step_compiled.log" | tail -3
tail -1 "$OUT/step_compiled.log" > "$OUT/step_compiled.json"

part "host side of an update, ViT-B, bf16, compiled step (graphs cached by the part above): Stage 1, Stage 2"
limited 60 $PY -m benchmarks.host_overhead --preset vitb --device cuda --dtype bf16 --compile --timing-only \
    --loops stage1 stage2 --updates 10 --warmup 3 2>&1 | tee "$OUT/host_compiled.log" | tail -3
tail -1 "$OUT/host_compiled.log" > "$OUT/host_compiled.json"

part "bf16 vs fp32 loss agreement, ViT-B"
limited 40 $PY -m benchmarks.precision_agreement --preset vitb --batch 4 --clones 8 --device cuda 2>&1 \
    | tee "$OUT/precision.log" | tail -3
tail -1 "$OUT/precision.log" > "$OUT/precision.json"

part "mini pretraining: 200 Stage-1 updates of ViT-B on 10-s synthetic clips (compiled: the CUDA default)"
work=$(mktemp -d)
cat > "$work/study.yaml" <<YAML
study: {name: device-check, results: $work/results, seeds: [0], variants: [SSLAM], pretrain_dataset: pretrain,
        benchmarks: [poly], regimes: [linear]}
synthetic: {seed: 0, clip_seconds: 10.0, pretrain_clips: 384}
datasets:
  pretrain: {adapter: synthetic, options: {set: pretrain}, target_length: 1024, norm_mean: null, norm_std: null}
  poly: {adapter: synthetic, options: {set: poly}, target_length: 1024}
pretrain:
  stage1: {steps: 200, warmup_steps: 20, batch_size: 12, checkpoint_every: 100, log_every: 10, num_workers: 4}
evaluation: {benchmarks: {poly: {dataset: poly}}}
YAML
limited 60 $PY -m sslam.cli synth --config "$work/study.yaml" --out "$work/synth" --sets pretrain > "$OUT/mini_synth.log" 2>&1
limited 60 $PY -m sslam.cli cache build --manifest "$work/synth/pretrain/manifest.tsv" --out "$work/shard.h5" \
    --target-length 1024 --config "$work/study.yaml" > "$OUT/mini_cache.log" 2>&1
SSLAM_PROGRESS_SECONDS=10 limited 150 $PY -m sslam.cli pretrain --config "$work/study.yaml" --stage 1 \
    --out "$work/stage1" --shards "$work/shard.h5" --device cuda --no-progress 2>&1 | tee "$OUT/mini_pretrain.log" \
    | grep -E "\[stage|finished|error|ended early|skipped"
cp "$work/stage1/metrics.jsonl" "$OUT/mini_pretrain_metrics.jsonl" 2>/dev/null
$PY - "$OUT/mini_pretrain_metrics.jsonl" <<'PYEOF' | tee "$OUT/mini_pretrain.json"
import json, sys
try:
    rows = [json.loads(line) for line in open(sys.argv[1])]
except OSError:
    rows = []
print(json.dumps({"updates": rows[-1]["step"], "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
                  "clips_per_s_last": rows[-1]["clips_per_s"], "finite": all(r["loss"] == r["loss"] for r in rows)}
                 if rows else {"updates": 0}))
PYEOF
rm -rf "$work"
part "done"
