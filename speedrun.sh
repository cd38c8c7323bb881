#!/usr/bin/env bash
# speedrun.sh: the whole DeepSeek-R1 paper in miniature, in one command, on the tiny CPU default.
#
#   bash speedrun.sh                          # the real run (target: under an hour on 2 CPU cores)
#   SPEEDRUN_SMOKE=1 bash speedrun.sh         # every stage wired together at toy sizes (tests/test_speedrun.py)
#   SPEEDRUN_OUT=runs/sr2 bash speedrun.sh    # another output folder (default runs/speedrun)
#
# What it runs, in the paper's order (each stage is one script you can also run alone; the flags are below):
#   1. pretrain.py     our DeepSeek-V3-Base: a tiny MoE+MLA model on a bilingual arithmetic corpus
#   2. train_zero.py   DeepSeek-R1-Zero: GRPO straight from the base, rule rewards only (sec. 2.2)
#   3. train_r1.py     DeepSeek-R1's four stages: cold start, reasoning RL, rejection sampling + SFT, RL for all
#                      scenarios (sec. 2.3)
#   4. pretrain.py     the student's base: a dense model a few times smaller, on the same corpus
#   5. train_zero.py   RL on that small base: what the paper says distillation beats (sec. 4.1)
#   6. distill.py      the distilled student: SFT of the small base on R1's stage-3 traces (sec. 2.4 / 4.1)
#   7. evaluate.py     every checkpoint on the same held-out problems, with 95% intervals (sec. 3)
# and ends with one table and the time each stage took (also in $OUT/times.txt).
#
# Running it again continues where it stopped: a finished base is kept, the training scripts resume (--resume, or
# train_r1.py's own skipping of finished stages), evaluate.py reads back its finished shards.
# On a machine shared with other jobs, OMP_WAIT_POLICY=PASSIVE bash speedrun.sh is faster (see the README).
set -euo pipefail
cd "$(dirname "$0")"

OUT=${SPEEDRUN_OUT:-runs/speedrun}
PY=${PYTHON:-python}
TASK=arithmetic-bilingual                 # sums of five digits, asked in English or Chinese
TASK_KWARGS='{"n_terms": 5}'
RL_STUDENT_STEPS=200                      # GRPO steps on the student base (about the distillation's training FLOPs:
                                          # distill.py's results.json prints both, adjust to match)
if [[ "${SPEEDRUN_SMOKE:-0}" == 1 ]]; then
    # toy sizes: every script runs, nothing learns (the smoke test seeds stage 1's cold-start data, since an
    # untrained R1-Zero solves nothing for the rejection filter to keep)
    TASK_KWARGS='{"n_terms": 2}'
    RL_STUDENT_STEPS=1
    PRETRAIN=(--n-docs 200 --steps 2 --batch-size 4 --vocab-size 420 --eval-problems 4 --max-new-tokens 16)
    ZERO=(--steps 1 --prompts-per-step 2 --group-size 2 --max-new-tokens 16 --eval-problems 4 --eval-k 2)
    R1=(--cold-prompts 4 --cold-k 2 --sft-steps 2 --sft3-steps 2 --sft-batch 4 --rl-steps 1 --rl4-steps 1
        --prompts-per-step 2 --group-size 2 --max-new-tokens 16 --rs-prompts 8 --rs-k 2 --rm-steps 1 --rm-pairs 8
        --rm-batch 4 --eval-problems 4 --eval-k 2 --eval-general 4 --eval-every 1 --save-every 1)
    DISTILL=(--steps 2 --batch-size 4 --eval-problems 4 --eval-k 2 --max-new-tokens 16)
    EVAL=(--problems 4 --k 2 --max-new-tokens 16 --n-boot 50)
else
    PRETRAIN=()
    ZERO=()
    R1=()
    DISTILL=()
    EVAL=(--problems 200 --k 8)           # the problems every training script evaluates on (seed 1234)
fi
TASK_ARGS=(--task "$TASK" --task-kwargs "$TASK_KWARGS")
# R1's base recipe (pretrain.py flags besides the task), read from train_r1.py so the two cannot drift apart
base_flags=$("$PY" -c 'import train_r1; print(*train_r1.BASE_FLAGS)')   # (an assignment: set -e stops on failure)
read -r -a BASE_FLAGS <<< "$base_flags"
mkdir -p "$OUT"
TIMES="$OUT/times.txt"
echo "# speedrun started $(date '+%Y-%m-%d %H:%M:%S') on $(getconf _NPROCESSORS_ONLN) CPU cores," \
    "smoke=${SPEEDRUN_SMOKE:-0}" >> "$TIMES"

# stage NAME COMMAND...: run it, then print and record its wall time
stage() {
    local name=$1 t0=$SECONDS
    shift
    echo
    echo "=== $name ($(date '+%H:%M:%S')) ==="
    "$@"
    printf '%-34s %6d s\n' "$name" $((SECONDS - t0)) | tee -a "$TIMES"
}

# a pretrain.py folder is finished when its config.json exists (saved last); pretrain.py never overwrites a folder
pretrain_once() {
    local out=$1
    shift
    if [[ -f "$out/config.json" ]]; then echo "$out exists: kept"; else "$PY" pretrain.py --out "$out" "$@"; fi
}

# 1. The base model. Mostly worked sums in the R1-Zero template (the skill) plus whole R1-Zero transcripts whose
#    completions are mostly guesses (the habit RL must change); 30% of reasoning opens in the other language and
#    15% switches mid-way; 10% general documents (a knowledge table with private fields, and the general tasks'
#    training split as Q/A text) for R1's general tasks: train_r1.BASE_FLAGS, the recipe its numbers were measured
#    with (uniform cuts, 1,300 steps).
stage "1 base (pretrain.py)" pretrain_once "$OUT/base-r1" "${TASK_ARGS[@]}" "${BASE_FLAGS[@]}" --eval-k 0 \
    "${PRETRAIN[@]}"

# 2. R1-Zero: GRPO from the base with accuracy + format rewards, no SFT. Pass@1 should rise and the answers grow
#    into step-by-step reasoning; it inherits the base's language mixing.
stage "2 R1-Zero (train_zero.py)" "$PY" train_zero.py --base "$OUT/base-r1" --out "$OUT/zero-r1" "${TASK_ARGS[@]}" \
    --resume "${ZERO[@]}"

# 3. R1: cold start from R1-Zero's verified samples rewritten into a readable format, reasoning RL with the
#    language-consistency reward, rejection sampling + SFT on a reasoning + general mix (sft_mix.jsonl: the traces
#    distillation reuses), RL for all scenarios with reward models. Finished stages are skipped on a rerun.
stage "3 R1, four stages (train_r1.py)" "$PY" train_r1.py --base "$OUT/base-r1" --zero "$OUT/zero-r1" \
    --out "$OUT/r1" "${TASK_ARGS[@]}" "${R1[@]}"

# 4. The student's base: the same corpus (same flags and seed, so the same tokenizer), a dense model (GQA, no MoE,
#    the tiny-dense preset: 0.50M parameters against the teacher's 1.55M).
stage "4 student base (pretrain.py)" pretrain_once "$OUT/base-dense" "${TASK_ARGS[@]}" "${BASE_FLAGS[@]}" \
    --eval-k 0 --preset tiny-dense "${PRETRAIN[@]}"

# 5. The paper's control: RL straight on the small base (R1-Zero's recipe), at a training budget comparable to
#    the distillation's.
stage "5 RL on the student (train_zero.py)" "$PY" train_zero.py --base "$OUT/base-dense" --out "$OUT/zero-dense" \
    "${TASK_ARGS[@]}" --resume "${ZERO[@]}" --steps "$RL_STUDENT_STEPS" --eval-every "$RL_STUDENT_STEPS"

# 6. Distillation: SFT of the small base on R1's stage-3 traces, loss on the response only; results.json puts it
#    next to the RL run (held-out numbers, training wall time and FLOPs).
stage "6 distillation (distill.py)" "$PY" distill.py --traces "$OUT/r1/stage3/sft_mix.jsonl" \
    --teacher-base "$OUT/base-r1" --student "$OUT/base-dense" --out "$OUT/distill" "${TASK_ARGS[@]}" \
    --compare-rl "$OUT/zero-dense" --resume "${DISTILL[@]}"

# 7. Every model on the same held-out problems, T=0.6, top-p 0.95, k samples each, the template each was trained
#    with (read from its checkpoint): pass@1 with a 95% bootstrap interval, cons@k, pass@k, format, readability,
#    language consistency, length, truncation.
stage "7 evaluation (evaluate.py)" "$PY" evaluate.py \
    "$OUT/base-r1" "$OUT/zero-r1/checkpoint" "$OUT"/r1/stage{1,2,3,4}/checkpoint \
    "$OUT/base-dense" "$OUT/zero-dense/checkpoint" "$OUT/distill/checkpoint" \
    "${TASK_ARGS[@]}" --out "$OUT/eval" "${EVAL[@]}"

# The result: one table for every model, the compute of the two ways to make the small model reason, the times.
echo
echo "=== every model on the same held-out problems ($OUT/eval/results.md) ==="
cat "$OUT/eval/results.md"
echo
echo "=== the small dense model: distilled from R1 vs RL on its own ($OUT/distill/results.json) ==="
"$PY" - "$OUT/distill/results.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for name, part in (("distilled", r), ("RL only", r["rl"])):
    c, e = part["compute"], part["eval"]
    print(f"{name:10s} pass@1 {e['pass@1']:.3f}  training {c['train_seconds'] / 60:.1f} min  "
          f"{c['train_flops']:.3g} FLOPs")
EOF
echo
echo "=== time per stage ($TIMES) ==="
sed -n '/^# speedrun started/h; /^# speedrun started/!H; ${x;p}' "$TIMES"    # this run's lines: from its header on
echo "total                              $SECONDS s"
