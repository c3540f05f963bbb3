"""The loops that move tasks and results: node workers, masters, and the child entry point."""

from ensemble_launcher.orchestrator.node_worker import IteratorSource, NodeWorker

__all__ = ["IteratorSource", "NodeWorker"]
