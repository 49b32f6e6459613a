#!/usr/bin/env bash
# Interrupts the quickstart (plus a GRPO stage; every training stage checkpointing every 2
# steps) at random moments with SIGKILL or SIGINT until each trial completes, then checks that
# the trial's artifacts equal an uninterrupted run's: `hone run --locked` against the baseline
# lockfile. Usage: scripts/interrupt_soak.sh INTERRUPTS [SEED]; FORCE=grpo SPAN=12 aims every
# interrupt at one stage (the recipe runs whole first, then that stage is forced and cut).
set -u
KILLS=${1:-30}; RANDOM=${2:-7}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HONE=${HONE:-$ROOT/target/release/hone}
W=$(mktemp -d)
cp -r "$ROOT/data" "$W/data"; mkdir "$W/recipes"
sed 's/train: { /train: { checkpoint_every: 2, /' "$ROOT/recipes/quickstart.yaml" > "$W/recipes/q.yaml"
cat >> "$W/recipes/q.yaml" <<'YAML'

  grpo:
    kind: grpo
    model: { from: sft }
    prompts: { from: prompts }
    reward: { model: { from: rm } }
    group_size: 4
    max_new_tokens: 16
    train: { checkpoint_every: 2, epochs: 24, batch_size: 6, lr: 1.0e-4 }
YAML
grep -c "checkpoint_every: 2" "$W/recipes/q.yaml" | sed 's/^/training stages checkpointing every 2 steps: /'
start=$(date +%s)
"$HONE" run "$W/recipes/q.yaml" --store "$W/base" -q || { echo "baseline failed"; exit 1; }
base_s=$(( $(date +%s) - start ))
cp "$W/recipes/q.lock" "$W/base.lock"
echo "baseline: ${base_s}s"
kills=0; trials=0; failures=0
declare -A per_stage
while [ "$kills" -lt "$KILLS" ]; do
  trials=$((trials + 1)); store="$W/s$trials"; cp "$W/base.lock" "$W/recipes/q.lock"
  # FORCE=<stage>: the whole recipe runs uninterrupted first, then every run forces that
  # stage, so the interrupts fall on it (SPAN: its duration in seconds).
  FORCE_ARGS=()
  if [ -n "${FORCE:-}" ]; then
    "$HONE" run "$W/recipes/q.yaml" --store "$store" -q
    FORCE_ARGS=(--force "$FORCE")
  fi
  while :; do
    "$HONE" run "$W/recipes/q.yaml" --store "$store" "${FORCE_ARGS[@]}" --log-format json > "$W/out.txt" 2>&1 &
    pid=$!
    # Anywhere in the first half of a whole run's time: a resumed run skips what is cached,
    # so successive interrupts reach later stages.
    delay=$(awk -v r=$RANDOM -v b="${SPAN:-$base_s}" 'BEGIN { printf "%.2f", 0.3 + (r / 32767) * b * 0.5 }')
    sleep "$delay"
    if kill -0 "$pid" 2>/dev/null; then
      sig=KILL; [ $((RANDOM % 3)) -eq 0 ] && sig=INT
      stage=$(grep '"stage_started"' "$W/out.txt" | tail -1 | grep -o '"stage":"[a-z_]*"' | cut -d'"' -f4)
      kill -s "$sig" "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
      kills=$((kills + 1)); per_stage[${stage:-?}/$sig]=$(( ${per_stage[${stage:-?}/$sig]:-0} + 1 ))
    else
      wait "$pid"; rc=$?
      [ "$rc" -ne 0 ] && { echo "trial $trials: run failed rc=$rc"; tail -5 "$W/out.txt"; failures=$((failures + 1)); }
      break
    fi
  done
  cp "$W/base.lock" "$W/recipes/q.lock"
  if "$HONE" run "$W/recipes/q.yaml" --store "$store" --locked -q > "$W/locked.txt" 2>&1; then
    echo "trial $trials: --locked ok (interrupts so far $kills)"
  else
    echo "trial $trials: --locked FAILED"; cat "$W/locked.txt"; failures=$((failures + 1))
  fi
  rm -rf "$store"
done
echo "interrupts by stage/signal:"; for k in "${!per_stage[@]}"; do echo "  $k ${per_stage[$k]}"; done | sort
echo "$kills interrupts over $trials trials, $failures failures"
rm -rf "$W"
[ "$failures" -eq 0 ]
