"""The loops that move tasks and results: node workers, masters, and the child entry point.

``ClusterClient`` is here because the original project's users import it from here; it
lives in ``ensemble_launcher.cluster`` (loaded on first use).
"""

from ensemble_launcher._lazy import lazy_exports
from ensemble_launcher.orchestrator.node_worker import NodeWorker

__getattr__ = lazy_exports(__name__, {"ClusterClient": "ensemble_launcher.cluster.client"})

__all__ = ["ClusterClient", "NodeWorker"]
