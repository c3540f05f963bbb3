"""The loops that move tasks and results: today the node worker; the master tree next."""

from ensemble_launcher.orchestrator.node_worker import NodeWorker

__all__ = ["NodeWorker"]
