#!/usr/bin/env bash
# Multi-GPU smoke run of `torchrun -m amylum train` on NCCL (device tool, nvidia-h100-x2 or larger):
#   bash bench/gpu_multi_smoke.sh OUT_DIR [GPUS]
# 1. one process (the plain trainer) as the reference; 2. a zero-bubble modality-parallel
# pipeline (vision stage -> LLM stage: NCCL send/recv, W split); 3. a colocated plan with dp = GPUS
# (FSDP2 over NCCL). Same config, data and global batch; prints losses and ms/step per run.
set -euo pipefail
OUT=${1:?usage: bash bench/gpu_multi_smoke.sh OUT_DIR [GPUS]}
N=${2:-2}
export NCCL_NVLS_ENABLE=0  # no NVLink multicast on the lent machines
COMMON=(--model.preset=tiny-vlm --training.steps=20 --training.batch_size=8 --training.warmup_steps=5
        --training.lr=0.003 --data.n_train=512 --data.n_eval=0 --eval.every=0 --metrics.log_every=1
        --metrics.progress_bar=false --metrics.tensorboard=false --metrics.report=false
        --checkpoint.every=20 --checkpoint.export=false --parallel.timeout_s=120)
python -m amylum train "${COMMON[@]}" --job.run_dir="$OUT/one" > "$OUT/one.log" 2>&1
python -m amylum plan --preset tiny-vlm --gpus "$N" --gpus-per-node "$N" --global-batch 8 --placement modality_parallel --out "$OUT/mp.json" > "$OUT/mp.plan.txt"; head -2 "$OUT/mp.plan.txt"
torchrun --nproc-per-node "$N" -m amylum train "${COMMON[@]}" --job.run_dir="$OUT/mp" --plan "$OUT/mp.json" > "$OUT/mp.log" 2>&1
python -m amylum plan --preset tiny-vlm --gpus "$N" --gpus-per-node "$N" --global-batch 8 --placement colocated --out "$OUT/co.json" > "$OUT/co.plan.txt"; head -2 "$OUT/co.plan.txt"
torchrun --nproc-per-node "$N" -m amylum train "${COMMON[@]}" --job.run_dir="$OUT/co" --plan "$OUT/co.json" > "$OUT/co.log" 2>&1
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {}
for name in ("one", "mp", "co"):
    rows = [json.loads(l) for l in open(out / name / "metrics.jsonl")]
    runs[name] = [r for r in rows if r.get("kind") == "train"]
for name, tr in runs.items():
    ms = 1000 * sum(r["step_time_s"] for r in tr[1:]) / max(1, len(tr) - 1)
    rel = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(tr, runs["one"]))
    print(f"{name:>4}: {len(tr)} steps, loss {tr[0]['loss']:.4f} -> {tr[-1]['loss']:.4f}, "
          f"{ms:.1f} ms/step (steps 2..), largest relative loss difference vs one process {rel:.2e}")
PY
