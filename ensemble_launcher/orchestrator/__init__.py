"""The loops that move tasks and results: node workers, masters, and the child entry point."""

from ensemble_launcher.orchestrator.node_worker import NodeWorker

__all__ = ["NodeWorker"]
