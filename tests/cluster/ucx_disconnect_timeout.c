/*
 * LD_PRELOAD shim for the test cluster: bound the wait in MPICH's MPI_Finalize for UCX
 * endpoint disconnects.
 *
 * MPICH 4.0 (ch4:ucx) disconnects every endpoint in MPI_Finalize and then spins until all
 * disconnect requests complete. With UCX 1.13 over TCP (Debian 12), a flush towards a peer
 * that has already closed its side never completes (openucx/ucx#8738), so the rank spins
 * forever while the others wait in the PMI barrier. On the namespace hosts this hit a
 * large share of multi-host runs. After ELTEST_UCX_DISCONNECT_TIMEOUT seconds (default 1)
 * from the first disconnect, this reports every request as completed; MPICH then releases
 * the requests and ucp_worker_destroy() closes what is left. Nothing else is changed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static double give_up_at;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

void *ucp_disconnect_nb(void *ep)
{
    static void *(*real)(void *);
    if (!real)
        real = (void *(*)(void *)) dlsym(RTLD_NEXT, "ucp_disconnect_nb");
    if (give_up_at == 0) {
        const char *limit = getenv("ELTEST_UCX_DISCONNECT_TIMEOUT");
        give_up_at = now() + (limit ? atof(limit) : 1.0);
    }
    return real(ep);
}

int ucp_request_is_completed(void *request)
{
    static int (*real)(void *);
    if (!real)
        real = (int (*)(void *)) dlsym(RTLD_NEXT, "ucp_request_is_completed");
    if (give_up_at != 0 && now() > give_up_at)
        return 1;
    return real(request);
}
