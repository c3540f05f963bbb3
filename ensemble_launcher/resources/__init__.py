"""What the allocation offers: nodes, and the CPUs and GPUs of each."""

from ensemble_launcher.resources.node import (
    NodeResources,
    check_requirements,
    is_this_host,
    local_node,
)

__all__ = ["NodeResources", "check_requirements", "is_this_host", "local_node"]
