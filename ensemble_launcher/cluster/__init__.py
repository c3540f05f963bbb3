"""Cluster mode: a long-lived orchestrator that clients submit tasks to, for futures.

    el start / EnsembleLauncher.start() -> head (its own process): the root's loop + the desk
    ClusterClient(checkpoint_dir).submit(...) -> concurrent.futures.Future

``protocol`` is what clients and the head say; ``checkpoint`` how clients find the head;
``intake`` how a submitted task is checked and enters the ledger; ``desk`` the head's
socket for clients; ``client`` the user's side; ``head`` the head's process.
"""

from ensemble_launcher._lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {"ClusterClient": "ensemble_launcher.cluster.client",
                                      "ClusterFuture": "ensemble_launcher.cluster.client"})

__all__ = ["ClusterClient", "ClusterFuture"]
