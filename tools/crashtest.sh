#!/usr/bin/env bash
# Crash test with an oracle: random store operations are killed with SIGKILL at random moments; after every kill
# the store must reopen, verify clean, and agree with what the harness saw acknowledged.
#
# Usage: tools/crashtest.sh [--cycles N] [--seed S] [--max-delay-ms MS] [--repair-every K] [--keep] EXPERTSTORE WORKDIR
#
# Each cycle starts one writer operation (ingest, ingest --replace, rm, compact, profile, calibrate --sample, rest)
# on one of three models built from two generated checkpoints (or on the model `prof`), together with a recorder
# (a generate on the model `rec`, whose usage goes into the catalog or, while the writer holds the store, into a
# journal), sleeps a random time and kills whatever still runs. Every K-th cycle (default 3) it then runs `repair`,
# which rebuilds the catalog the killed process left from the segments' catalog log and salvages its metadata, and
# the checks below hold for the repaired store as for any other. Then it checks:
#   - `verify` exits 0;
#   - every model is in a state the acknowledged history allows: an acknowledged ingest is complete with the
#     checkpoint's exact expert checksums, an acknowledged rm is absent; an operation that was killed left either
#     the state before it or the state it was making (an ingest may leave an incomplete model whose experts all
#     have the right checksums, never a wrong one; rm leaves all or nothing);
#   - the recorder model's activation count is a whole number of generate runs, at least those acknowledged and at
#     most those started.
# Exits 1 at the first disagreement, printing the cycle, the operation and what was found; the work directory is
# kept then. Prints a summary line: cycles, kills, operations acknowledged, losses (always 0 on success).
set -euo pipefail

cycles=20
seed=$RANDOM
max_delay_ms=250
repair_every=3
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cycles) cycles=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --max-delay-ms) max_delay_ms=$2; shift 2 ;;
    --repair-every) repair_every=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
if [ $# -ne 2 ]; then
  echo "usage: tools/crashtest.sh [--cycles N] [--seed S] [--max-delay-ms MS] [--repair-every K] [--keep] EXPERTSTORE WORKDIR" >&2
  exit 2
fi
es=$(realpath "$1")
work=$2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tiny=${ES_TINY_MODEL:-$root/models/tiny-qwen3-moe}
[ -x "$es" ] || { echo "crashtest: $es is not executable" >&2; exit 2; }
[ -d "$tiny" ] || { echo "crashtest: the tiny model is missing at $tiny" >&2; exit 2; }
RANDOM=$seed
rm -rf "$work"
mkdir -p "$work"
store="$work/store"
log="$work/log"
: > "$log"

note() { echo "$*" >> "$log"; }
fail() {
  echo "crashtest: FAILED at cycle $cycle (seed $seed): $*" >&2
  echo "crashtest: the store and the log are in $work" >&2
  exit 1
}

# Per-expert checksums ("layer expert checksum" lines) of a model, or nothing when it is absent.
expert_sums() {
  "$es" experts --model "$2" --json --store "$1" 2>/dev/null |
    grep -o '"layer":[0-9]*,"expert":[0-9]*,[^}]*"checksum":"[0-9a-f]*"' |
    sed -E 's/"layer":([0-9]*),"expert":([0-9]*),.*"checksum":"([0-9a-f]*)"/\1 \2 \3/' || true
}
# "complete", "incomplete" or "absent".
model_state() {
  local row
  row=$("$es" models --json --store "$1" | grep -o "{\"name\":\"$2\"[^]]*\"complete\":[a-z]*" || true)
  if [ -z "$row" ]; then echo absent
  elif [[ "$row" == *'"complete":true' ]]; then echo complete
  else echo incomplete; fi
}
activations() {
  "$es" experts --model rec --json --store "$store" | grep -o '"activations":[0-9]*' | awk -F: '{s += $2} END {print s + 0}'
}

# ---- setup: two checkpoints, their reference checksums, the recorder model and the usage of one generate -------
for i in 1 2; do
  "$es" make-checkpoint "$work/ck$i" --arch qwen3_moe --seed "$i" --layers 4 --experts 16 --hidden 256 \
    --moe-intermediate 128 --quiet
  "$es" ingest "$work/ck$i" --name ref --store "$work/ref$i" --quiet
  expert_sums "$work/ref$i" ref > "$work/sums$i"
  [ -s "$work/sums$i" ] || { echo "crashtest: no reference checksums for ck$i" >&2; exit 1; }
  rm -rf "$work/ref$i"
done
cmp -s "$work/sums1" "$work/sums2" && { echo "crashtest: the two checkpoints are identical" >&2; exit 1; }
printf '{"domain":"code","text":"def main(): return 1"}\n{"domain":"prose","text":"The river ran to the sea."}\n' \
  > "$work/prompts.jsonl"
"$es" ingest "$tiny" --name rec --store "$store" --quiet
# profile and rest write metadata of their own model, so that rec's usage counts only the recorder's runs.
"$es" ingest "$tiny" --name prof --store "$store" --quiet
rec_args=(generate --model rec --prompt "def main(" --max-tokens 3 --temperature 0 --quiet --store "$store")
generate_rec() { "$es" "${rec_args[@]}"; }
before=$(activations)
generate_rec > /dev/null 2>&1
per_run=$(( $(activations) - before ))
[ "$per_run" -gt 0 ] || { echo "crashtest: a generate recorded no usage" >&2; exit 1; }
rec_acked=1
rec_started=1
base_activations=$before

# The oracle: per model, the states the history allows ("absent", "ck1", "ck2"; "inc:ckN" is an incomplete model
# whose present experts match ckN). `allowed` is a space-separated set.
declare -A allowed
for m in m0 m1 m2; do allowed[$m]="absent"; done

check_model() {
  local m=$1 state sums ok=0
  state=$(model_state "$store" "$m")
  case "$state" in
    absent) found=absent ;;
    complete)
      sums=$(expert_sums "$store" "$m")
      if [ "$sums" = "$(cat "$work/sums1")" ]; then found=ck1
      elif [ "$sums" = "$(cat "$work/sums2")" ]; then found=ck2
      else fail "$m is complete but its expert checksums match neither checkpoint"; fi ;;
    incomplete)
      sums=$(expert_sums "$store" "$m")
      if [ -z "$sums" ] || grep -qvxF -f "$work/sums1" <<< "$sums"; then
        if [ -z "$sums" ] || grep -qvxF -f "$work/sums2" <<< "$sums"; then
          if [ -n "$sums" ]; then fail "$m is incomplete and holds experts of neither checkpoint"; fi
        else found=inc:ck2; fi
      else found=inc:ck1; fi
      # An incomplete model with no experts yet: either checkpoint's ingest may have started it.
      if [ -z "$sums" ]; then
        for a in ${allowed[$m]}; do [[ "$a" == inc:* ]] && found=$a; done
        [ -n "${found:-}" ] || found=inc:unknown
      fi ;;
  esac
  for a in ${allowed[$m]}; do [ "$a" = "$found" ] && ok=1; done
  [ $ok -eq 1 ] || fail "$m is $found; the history allows only: ${allowed[$m]}"
  allowed[$m]=$found
}

kills=0
acked=0
repairs=0
cycle=0
ops=(ingest ingest replace rm compact profile calibrate rest)
for cycle in $(seq 1 "$cycles"); do
  m=m$((RANDOM % 3))
  op=${ops[$((RANDOM % ${#ops[@]}))]}
  current=${allowed[$m]}
  ck=ck$((RANDOM % 2 + 1))
  # Pick an operation that is valid in the current state.
  case "$op:$current" in
    ingest:absent) cmd=(ingest "$work/$ck" --name "$m" --commit-mb 1); target=$ck ;;
    ingest:inc:*) ck=${current#inc:}; cmd=(ingest "$work/$ck" --name "$m" --commit-mb 1); target=$ck ;;
    ingest:ck*|replace:ck*) ck=ck1; [ "$current" = ck1 ] && ck=ck2
      cmd=(ingest "$work/$ck" --name "$m" --replace --commit-mb 1); target=$ck ;;
    replace:*) cmd=(ingest "$work/$ck" --name "$m" --replace --commit-mb 1); target=$ck ;;
    rm:absent) cmd=(compact --max-dead-fraction 0); target=same ;;
    rm:*) cmd=(rm "$m"); target=absent ;;
    compact:*) cmd=(compact --max-dead-fraction 0); target=same ;;
    profile:*) cmd=(profile --model prof --prompts "$work/prompts.jsonl" --window 16); target=same ;;
    calibrate:*) cmd=(calibrate --model prof --text "$work/prompts.jsonl" --max-tokens 16 --sample 0.25); target=same ;;
    rest:*) cmd=(rest --model prof); target=same ;;
  esac
  note "cycle $cycle: ${cmd[*]} (state $current)"
  "$es" "${cmd[@]}" --quiet --store "$store" > "$work/op.out" 2>&1 &
  op_pid=$!
  # The recorder starts a moment later, so that it usually finds the store held and journals its usage.
  sleep "$(printf '0.%03d' $((RANDOM % 60)))"
  "$es" "${rec_args[@]}" > /dev/null 2>&1 &
  rec_pid=$!
  rec_started=$((rec_started + 1))
  delay=$((RANDOM % (max_delay_ms + 1)))
  sleep "$(printf '0.%03d' "$delay")"
  killed=0
  if kill -0 $op_pid 2>/dev/null; then kill -9 $op_pid 2>/dev/null && killed=1; fi
  kill -9 $rec_pid 2>/dev/null || true
  set +e
  { wait $op_pid; } 2>/dev/null; op_rc=$?
  { wait $rec_pid; } 2>/dev/null; rec_rc=$?
  set -e
  [ $rec_rc -eq 0 ] && rec_acked=$((rec_acked + 1))
  if [ $killed -eq 1 ] || [ $op_rc -eq 137 ]; then
    kills=$((kills + 1))
    case "$target" in
      same) ;;
      absent) allowed[$m]="$current absent" ;;
      *) allowed[$m]="$current $target inc:$target" ;;
    esac
  elif [ $op_rc -eq 5 ]; then
    # Busy: the recorder held the store as its writer first. Nothing was done.
    note "  busy"
  elif [ $op_rc -eq 0 ]; then
    acked=$((acked + 1))
    case "$target" in
      same) ;;
      *) allowed[$m]=$target ;;
    esac
  else
    fail "${cmd[*]} failed with exit $op_rc without being killed: $(cat "$work/op.out")"
  fi
  note "  op exit $op_rc (killed $killed), recorder exit $rec_rc"
  if [ "$repair_every" -gt 0 ] && [ $((cycle % repair_every)) -eq 0 ]; then
    "$es" repair --store "$store" > "$work/repair.out" 2>&1 || fail "repair: $(cat "$work/repair.out")"
    repairs=$((repairs + 1))
    note "  repaired: $(tr '\n' ' ' < "$work/repair.out")"
    rm -rf "$store"/catalog.damaged-*
  fi
  # After the kill: a writer opens the store (recovery, and the merge of the journals recorders wrote while the
  # store was held), verify, then the oracle.
  "$es" compact --max-dead-fraction 0.99 --quiet --store "$store" > "$work/verify.out" 2>&1 ||
    fail "reopening as the writer: $(cat "$work/verify.out")"
  "$es" verify --store "$store" > "$work/verify.out" 2>&1 || fail "verify: $(cat "$work/verify.out")"
  for mm in m0 m1 m2; do check_model "$mm"; done
  total=$(activations)
  runs=$(( (total - base_activations) / per_run ))
  [ $(( (total - base_activations) % per_run )) -eq 0 ] || fail "rec's usage ($total) is not a whole number of runs"
  [ "$runs" -ge "$rec_acked" ] || fail "rec's usage counts $runs runs; $rec_acked were acknowledged (usage was lost)"
  [ "$runs" -le "$rec_started" ] || fail "rec's usage counts $runs runs; only $rec_started were started"
  # What was counted is now acknowledged history.
  rec_acked=$runs
  rec_started=$runs
done
echo "crashtest: $cycles cycles (seed $seed): $kills operations killed, $acked acknowledged, $repairs repairs, 0 lost, verify clean every cycle"
[ $keep -eq 1 ] || rm -rf "$work"
