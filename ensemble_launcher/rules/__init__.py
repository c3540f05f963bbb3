"""Event rules (issue 12): groups of tasks, rules of trigger -> action, metrics per group.

This package sits above the orchestrator (like ``cluster``): ``engine`` drives the
ledger from rules that ``ensemble.rules`` parsed, and ``metrics`` keeps each group's
counts and streaming statistics.
"""

from ensemble_launcher.ensemble.rules import Action, Rule, When

__all__ = ["Action", "Rule", "When"]
