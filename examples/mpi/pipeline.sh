#!/bin/sh
# Tasks with dependencies, as stages: stage 2 (a summary) starts only once every task of
# stage 1 (MPI runs writing one file each) has succeeded; `el run` exits non-zero when a
# task fails, which stops the pipeline here.
#   examples/mpi/pipeline.sh [RUN_DIR]      (from the repository root)
set -e
cd "$(dirname "$0")/../.."
out=${1:-el-runs/pipeline}
examples/mpi/build.sh
mkdir -p el-runs/pipeline-data
el run examples/mpi/stage1.json --out "$out/stage1"
el run examples/mpi/stage2.json --out "$out/stage2"
cat el-runs/pipeline-data/summary.txt
