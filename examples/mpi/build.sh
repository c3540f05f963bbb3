#!/bin/sh
# Build the example MPI program next to this script: examples/mpi/build.sh
set -e
cd "$(dirname "$0")"
mpicc -O2 -o pi pi.c -lm
echo "built $(pwd)/pi"
