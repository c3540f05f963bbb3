/* A stand-in MPI simulation: integrate 4/(1+x^2) over [0,1] with N intervals, split
 * across the ranks, combined with MPI_Allreduce. Prints pi, the error and where it ran.
 *   mpiexec -n 4 ./pi 1000000 [output-file or -] [label]                            */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    double h = 1.0 / (double)n, local = 0.0, pi = 0.0;
    for (long i = rank; i < n; i += size) {
        double x = h * ((double)i + 0.5);
        local += 4.0 / (1.0 + x * x);
    }
    local *= h;
    MPI_Allreduce(&local, &pi, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) {
        int to_file = argc > 2 && argv[2][0] != '-';
        FILE *out = to_file ? fopen(argv[2], "w") : stdout;
        if (out == NULL) {
            perror(argv[2]);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        fprintf(out, "n=%ld ranks=%d pi=%.12f error=%.3e\n", n, size, pi, fabs(pi - M_PI));
        if (to_file) fclose(out);
    }
    MPI_Finalize();
    return 0;
}
