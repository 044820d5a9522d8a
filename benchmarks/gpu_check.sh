#!/usr/bin/env bash
# On a machine with a GPU: mine SciFact train with the judge on the GPU and print documents/s (corpus encoding)
# and pairs/s (judge scoring), next to the same job on the CPU. Run from the repository root after `make setup`
# (HARDNEG_DATA must hold scifact; a judge is trained first when runs/demo_judge is missing):
#     bash benchmarks/gpu_check.sh
set -euo pipefail
PY=${PY:-.venv/bin/python}
HN=${HN:-.venv/bin/hardneg}
export HARDNEG_DATA=${HARDNEG_DATA:-../shared/data} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export HARDNEG_CACHE=${HARDNEG_CACHE:-$(mktemp -d)}   # a fresh cache: the corpus is really encoded, pairs scored
OUT=${OUT:-runs/gpu_check}
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device here'; print('GPU:', torch.cuda.get_device_name(0), '| bf16:', torch.cuda.is_bf16_supported())"
test -f runs/demo_judge/judge.json || $HN -q train-judge --data scifact --split train:fit --out runs/demo_judge --overwrite
for dev in cuda cpu; do
  HARDNEG_CACHE=$HARDNEG_CACHE/$dev $HN -q mine --data scifact --split train --cross-encoder runs/demo_judge \
      --candidates.device $dev --cross-encoder.device $dev --out $OUT/$dev --overwrite > /dev/null
  $PY - "$OUT/$dev" "$dev" <<'PYEOF'
import json, sys
m = json.load(open(f"{sys.argv[1]}/manifest.json"))
t, c, docs = m["timings"], m["counts"], m["input"]["documents"]
enc = t.get("corpus_encode_s") or float("nan")
pairs = c["ce_pairs_scored"]  # scored in the shards (score_s); the judge check's pairs are timed apart
score = t.get("score_s") or float("nan")
print(f"{sys.argv[2]:>4}: {docs / enc:10.1f} documents/s (corpus encoding, {docs} docs in {enc:.1f} s); "
      f"{pairs / score if score else float('nan'):10.1f} pairs/s (judge, {pairs} pairs in {score:.1f} s); "
      f"total {t['total_s']:.1f} s")
PYEOF
done
