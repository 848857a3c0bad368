#!/bin/bash
# Submit qsmprep on a SLURM cluster: a job array over the participants (qsmprep_array.sbatch,
# one participant per task) and a group-level job that starts only if every task succeeded
# (--dependency=afterok on the array).
#
#   workflows/slurm/submit.sh BIDS_DIR OUT_DIR [LIST] [-- qsmprep participant options]
#
#   LIST  participants.tsv or a text file of labels (default BIDS_DIR/participants.tsv)
#
# Environment:
#   QSMPREP_CMD           how to start qsmprep in the jobs (default "qsmprep"); e.g.
#                         "apptainer run --cleanenv -B /data /path/qsmprep.sif" (--nv for GPUs)
#   QSMPREP_WORK          work folder root (default OUT_DIR/../qsmprep_work)
#   QSMPREP_SBATCH_ARGS   extra sbatch options for the array (e.g. "--account=x --partition=y
#                         --cpus-per-task=4 --mem=16G"; they override the #SBATCH lines)
#   QSMPREP_GROUP_SBATCH_ARGS  the same for the group job (default: QSMPREP_SBATCH_ARGS)
#   QSMPREP_MAX_PARALLEL  at most this many array tasks at once (--array=1-N%M)
#   QSMPREP_LOG_DIR       where the job logs go (default OUT_DIR/../qsmprep_logs)
#
# Prints "array=<id> group=<id>" on the last line.  Paths are made absolute, so it can be run
# from anywhere.
set -euo pipefail
die() { echo "submit.sh: ERROR: $*" >&2; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

[ $# -ge 2 ] || die "usage: $0 BIDS_DIR OUT_DIR [LIST] [-- qsmprep options]"
command -v sbatch >/dev/null 2>&1 || die "sbatch not found: run this on a SLURM login node."
abspath() { local d; d="$(cd "$(dirname "$1")" && pwd)" || return 1; echo "$d/$(basename "$1")"; }
[ -d "$1" ] || die "BIDS_DIR $1 is not a folder."
BIDS_DIR="$(abspath "$1")"
mkdir -p "$(dirname "$2")"
OUT_DIR="$(abspath "$2")"
shift 2
LIST="$BIDS_DIR/participants.tsv"
if [ $# -gt 0 ] && [ "$1" != "--" ]; then LIST="$(abspath "$1")"; shift; fi
[ "${1:-}" = "--" ] && shift

N="$(bash "$HERE/qsmprep_array.sbatch" --list "$BIDS_DIR" "$LIST" | wc -l)"
[ "$N" -gt 0 ] || die "no participants found in $LIST."

LOG_DIR="${QSMPREP_LOG_DIR:-$(dirname "$OUT_DIR")/qsmprep_logs}"
mkdir -p "$LOG_DIR"
export QSMPREP_WORK="${QSMPREP_WORK:-$(dirname "$OUT_DIR")/qsmprep_work}"

ARRAY="1-$N"
[ -n "${QSMPREP_MAX_PARALLEL:-}" ] && ARRAY="$ARRAY%$QSMPREP_MAX_PARALLEL"
read -r -a EXTRA <<<"${QSMPREP_SBATCH_ARGS:-}"
read -r -a GEXTRA <<<"${QSMPREP_GROUP_SBATCH_ARGS:-${QSMPREP_SBATCH_ARGS:-}}"

ARRAY_ID="$(sbatch --parsable --array="$ARRAY" --output="$LOG_DIR/qsmprep-%A_%a.out" "${EXTRA[@]}" \
    "$HERE/qsmprep_array.sbatch" "$BIDS_DIR" "$OUT_DIR" "$LIST" -- "$@")" || die "sbatch of the array failed."
ARRAY_ID="${ARRAY_ID%%;*}"
GROUP_ID="$(sbatch --parsable --dependency="afterok:$ARRAY_ID" --kill-on-invalid-dep=yes \
    --output="$LOG_DIR/qsmprep-group-%j.out" "${GEXTRA[@]}" \
    "$HERE/qsmprep_group.sbatch" "$BIDS_DIR" "$OUT_DIR")" || die "sbatch of the group job failed (array $ARRAY_ID is queued; scancel it or submit the group job by hand)."
GROUP_ID="${GROUP_ID%%;*}"
echo "submit.sh: $N participants from $LIST; logs in $LOG_DIR; work in $QSMPREP_WORK" >&2
echo "array=$ARRAY_ID group=$GROUP_ID"
