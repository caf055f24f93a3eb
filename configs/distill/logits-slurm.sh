#!/usr/bin/env bash
# Teacher logits as a Slurm job array, then the merge as a job that starts when every array
# task has succeeded. Task I of N computes shard I of N into its own part directory; the
# merge checks that the parts agree (teacher, data, settings) and that none is missing.
#
#   bash configs/distill/logits-slurm.sh TEACHER TEXT OUT [N=4]
#
# Assumed: `microllm` on the PATH of the compute nodes and TEACHER, TEXT and OUT on a file
# system they share.
set -euo pipefail
teacher=${1:?teacher model}
text=${2:?training text}
out=${3:?store directory}
n=${4:-4}
mkdir -p "$out.parts"
array=$(sbatch --parsable --array=1-"$n" --cpus-per-task=8 --mem=16G \
  --job-name=microllm-logits --output="$out.parts/%a.log" \
  --wrap="microllm distill logits --teacher '$teacher' --data '$text' --seqlen 256 \
--top-k 64 --threads 8 --shard \$SLURM_ARRAY_TASK_ID/$n --out '$out.parts/part-'\$SLURM_ARRAY_TASK_ID --force")
sbatch --parsable --dependency=afterok:"$array" --job-name=microllm-logits-merge \
  --output="$out.parts/merge.log" \
  --wrap="microllm distill logits --merge '$out.parts'/part-* --out '$out' --force"
echo "submitted array $array ($n shards) and its merge"
