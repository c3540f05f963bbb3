"""How callables and values are pickled on their way to a runner and back: plain pickle
where it can, cloudpickle where it must (a lambda, a function of ``__main__``)."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from typing import Any

from ensemble_launcher.errors import ExecutorError


def pickle_any(value: Any) -> bytes:
    """``value`` pickled, by cloudpickle when plain pickle refuses it (a lambda among the
    arguments)."""
    try:
        return pickle.dumps(value, 5)
    except Exception:  # noqa: BLE001 - pickle raises many types; cloudpickle is the fallback
        import cloudpickle

        return cloudpickle.dumps(value)


def pickle_callable(fn: Callable[..., Any]) -> tuple[bytes, bytes]:
    """(digest, blob) of a task's callable, serialized once by cloudpickle (which also
    carries functions defined in ``__main__`` or in a notebook). ExecutorError, naming
    it, when it cannot be serialized."""
    import cloudpickle

    try:
        blob = cloudpickle.dumps(fn)
    except Exception as exc:  # noqa: BLE001 - report any pickling failure as one error
        raise ExecutorError(f"cannot serialize callable {fn!r}: {exc}") from exc
    return hashlib.blake2b(blob, digest_size=16).digest(), blob
