#!/usr/bin/env bash
# Records how this Slurm version's squeue / scontrol / sbatch / scancel / sacct answer for jobs in
# every state, verbatim, for flow's parser tests (scripts/cluster/samples-<version>.txt). Needs a
# fresh cluster from scripts/test-cluster.sh (job ids start at 1) and takes about 3.5 minutes (a
# job time-out, then waiting until slurmctld purges a finished job).
#   scripts/test-cluster.sh start && scripts/cluster/record-slurm-samples.sh [OUT] [STATE_DIR]
# OUT defaults to scripts/cluster/samples-<major.minor>.txt next to this script.
# Format: "### HH:MM:SS $ COMMAND", its stdout+stderr verbatim, "[exit N]", a blank line;
# lines "# ..." are notes.
# shellcheck disable=SC2016 # the $VARIABLES in --wrap scripts are for the job's shell
set -uo pipefail
STATE=${2:-${FLOW_CLUSTER_DIR:-/tmp/flow-test-cluster}}
# shellcheck source=/dev/null
source "$STATE/env"
VERSION=$(sinfo --version | sed 's/^slurm[^ ]* \([0-9]*\.[0-9]*\).*/\1/')
OUT=$(realpath -m "${1:-$(dirname "$0")/samples-$VERSION.txt}")
cd "$FLOW_TEST_SHARED_DIR" || exit 1

ts() { date +%T; }
# rec COMMAND: run it with bash, record it verbatim.
rec() { { echo "### $(ts) \$ $1"; bash -c "$1" 2>&1; echo "[exit $?]"; echo; } >>"$OUT"; }
note() { { echo "# $*"; echo; } >>"$OUT"; }
# The job id printed by the last recorded sbatch --parsable.
last_id() { grep -E '^[0-9]+$' "$OUT" | tail -n 1; }
SQ="squeue --noheader --format='%i|%T|%r'"
SQA="squeue --noheader --states=all --format='%i|%T|%r'"

{
  echo "# $(sinfo --version) samples, recorded by scripts/cluster/record-slurm-samples.sh on the"
  echo "# one-node test cluster of scripts/test-cluster.sh ($(sinfo -h -N -o %c | head -n 1) CPUs, 2 fake GPUs, no slurmdbd)."
  echo "# Format: '### HH:MM:SS \$ COMMAND', its stdout+stderr verbatim, '[exit N]', a blank line;"
  echo "# '# ' lines are notes."
  echo
} >"$OUT"

rec "sinfo"
rec "sinfo --noheader --Node --format='%N|%t|%G|%c|%m'"
rec "scontrol show node -o"
rec "sacct -j 1"

note "jobs: L1 sleep 300 (cancelled later), L2 gpu:1 + sleep 8, OK echo hi, F exit 3," \
  "A array 0-2 (sleep 3 each), G2 gpu:2, K kill -9 of the batch shell"
rec "sbatch --parsable --wrap 'sleep 300'"
L1=$(last_id)
L2=$(sbatch --parsable --gres=gpu:1 --wrap 'echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES; sleep 8')
OK=$(sbatch --parsable --wrap 'echo hi')
F=$(sbatch --parsable --wrap 'echo failing; exit 3')
rec "sbatch --parsable --array=0-2 --wrap 'echo task=\$SLURM_ARRAY_TASK_ID job=\$SLURM_JOB_ID arr=\$SLURM_ARRAY_JOB_ID; sleep 3'"
A=$(last_id)
G2=$(sbatch --parsable --gres=gpu:2 --wrap 'echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES')
K=$(sbatch --parsable --wrap 'echo about to die; kill -9 $$')
ALL=$L1,$L2,$OK,$F,$A,$G2,$K
note "L1=$L1 L2=$L2 OK=$OK F=$F A=$A G2=$G2 K=$K"
sleep 0.5
rec "squeue"
rec "$SQ --jobs=$ALL"
rec "squeue --noheader --format='%A|%F|%K|%i|%T|%r' --jobs=$A"
rec "scontrol show job -o $OK"
rec "scontrol show job -o $A"

rec "scancel $L1"
sleep 1
note "right after scancel: without --states=all squeue hides a finished job even when asked for it by id"
rec "$SQ --jobs=$L1"
rec "$SQA --jobs=$L1"
sleep 3
note "array: running tasks print as ID_TASK, the pending rest as ID_[RANGE]"
rec "$SQ --jobs=$ALL"
rec "$SQA --jobs=$ALL"
rec "squeue --noheader --states=all --format='%A|%F|%K|%i|%T|%r' --jobs=$A"
rec "scontrol show job -o $A"
sleep 12

note "all finished"
rec "$SQ --jobs=$ALL"
rec "$SQA --jobs=$ALL"
rec "$SQA"
note "scontrol show job -o of: COMPLETED, FAILED (exit 3), CANCELLED, COMPLETED gpu:1, COMPLETED gpu:2," \
  "FAILED (batch shell killed by signal 9)"
for j in $OK $F $L1 $L2 $G2 $K; do rec "scontrol show job -o $j"; done
note "an array's id shows all its tasks, one line each; ID_TASK shows one"
rec "scontrol show job -o $A"
rec "scontrol show job -o ${A}_1"
for f in slurm-*.out; do rec "cat $f"; done

T=$(sbatch --parsable --time=0:01 --wrap 'sleep 120')
TS=$(date +%s)
sleep 2
rec "$SQ --jobs=$T"
rec "scontrol show job -o $T"
while [[ $(squeue --noheader --format=%T --jobs="$T" 2>/dev/null) == @(RUNNING|PENDING|COMPLETING) ]]; do
  sleep 1
done
note "--time=0:01 job $T left the queue $(($(date +%s) - TS)) s after its submission" \
  "(slurmctld checks time limits every 30 s: 60-90 s)"
rec "$SQA --jobs=$T"
rec "scontrol show job -o $T"
rec "cat slurm-$T.out"

note "submission errors"
rec "sbatch --parsable --gres=gpu:3 --wrap true"
rec "sbatch --parsable --partition=nope --wrap true"
rec "sbatch --parsable --mem=999999 --wrap true"

END_OK=$(date -d "$(scontrol show job -o "$OK" | sed -n 's/.* EndTime=\([^ ]*\) .*/\1/p')" +%s)
while scontrol show job "$OK" >/dev/null 2>&1; do sleep 1; done
note "MinJobAge=$(scontrol show config | sed -n 's/^MinJobAge *= *//p'): job $OK was purged" \
  "$(($(date +%s) - END_OK)) s after its end (slurmctld purges on a 60 s cycle)"
rec "$SQ --jobs=$OK"
rec "$SQA --jobs=$OK"
rec "squeue --jobs=$OK"
note "a purged id next to a known one: no error, the purged one is just missing"
rec "$SQA --jobs=$OK,$T"
rec "scontrol show job $OK"
rec "scontrol show job -o $OK"
rec "scancel $OK"
rec "sacct -j $OK"
note "end"
echo "samples written to $OUT"
