"""Which pending task runs where: placement of tasks onto a node's cores and GPUs."""

from ensemble_launcher.scheduler.node_slots import (
    NodeSlots,
    Placement,
    needs_exclusive,
    spread_gpu_ids,
)

__all__ = ["NodeSlots", "Placement", "needs_exclusive", "spread_gpu_ids"]
