#!/usr/bin/env bash
# Usage: bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args]
# GPUS (total, default 8), GPUS_PER_NODE (default 8), CPUS_PER_TASK (default 5)
# and SRUN_ARGS come from the environment.
#
# Run from a login node it launches srun directly, as before. Submitted with
# sbatch it also survives preemption and time limits:
#
#   sbatch -p PARTITION -J JOB_NAME --nodes=1 --ntasks-per-node=8 \
#       --gres=gpu:8 --cpus-per-task=5 --time=24:00:00 \
#       --requeue --signal=B:TERM@300 --open-mode=append \
#       --output=slurm-%x-%j.out \
#       tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR
#
# - --signal=B:TERM@300: 300 s before the time limit Slurm sends SIGTERM to
#   this script, which passes it on to srun and so to every rank. Training
#   (tools/train.py, mmdist.PreemptionHook) finishes the current iteration,
#   saves a checkpoint and exits with code 143. Give enough seconds for one
#   iteration plus one checkpoint write.
# - On exit code 143 this script requeues the job (scontrol requeue); a job
#   preempted by Slurm (PreemptMode=REQUEUE) gets SIGTERM the same way and is
#   requeued by Slurm itself. --requeue makes the job eligible for both.
# - When the job starts again (SLURM_RESTART_COUNT > 0) training gets
#   --resume: it continues from the newest complete checkpoint in WORK_DIR.
# - --open-mode=append keeps the log of every run of the job in one file.
set -x
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PY_ARGS=("${@:5}")
# The project's virtual environment when it has one; PYTHON overrides.
VENV_PYTHON="$(dirname "$0")/../.venv/bin/python"
[ -x "$VENV_PYTHON" ] && PYTHON=${PYTHON:-$VENV_PYTHON}
PYTHON=${PYTHON:-python}
# tools/train.py's exit code after a SIGTERM was handled (checkpoint saved).
PREEMPTED_EXIT_CODE=143

if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && [[ " ${PY_ARGS[*]} " != *" --resume"* ]]; then
    echo "job restarted (${SLURM_RESTART_COUNT}): resuming from ${WORK_DIR}"
    PY_ARGS+=(--resume)
fi

# shellcheck disable=SC2086
PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
srun -p "${PARTITION}" \
    --job-name="${JOB_NAME}" \
    --gres=gpu:"${GPUS_PER_NODE}" \
    --ntasks="${GPUS}" \
    --ntasks-per-node="${GPUS_PER_NODE}" \
    --cpus-per-task="${CPUS_PER_TASK}" \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS} \
    "$PYTHON" -u "$(dirname "$0")/train.py" "${CONFIG}" --work-dir="${WORK_DIR}" --launcher="slurm" "${PY_ARGS[@]}" &
SRUN_PID=$!

# Pass SIGTERM on to srun (which signals every rank) and keep waiting: the
# ranks need the time to save their checkpoint.
trap 'echo "SIGTERM: asking training to checkpoint and stop"; kill -TERM "$SRUN_PID" 2>/dev/null' TERM
while true; do
    wait "$SRUN_PID"
    RC=$?
    kill -0 "$SRUN_PID" 2>/dev/null || break  # else wait was interrupted
done

if [ "$RC" -eq "$PREEMPTED_EXIT_CODE" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    echo "training stopped after saving a checkpoint: requeueing job ${SLURM_JOB_ID}"
    scontrol requeue "${SLURM_JOB_ID}" || echo "scontrol requeue failed; resubmit with --resume"
fi
exit "$RC"
