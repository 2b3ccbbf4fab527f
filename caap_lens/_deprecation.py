"""Old option names that still work, with a `DeprecationWarning` naming the new one.

Example:
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     renamed("rollout", "heads", "head_fusion", old_value="max", new_value="mean", default="mean")
    'max'
    >>> str(caught[0].message)
    'rollout: the option heads= is now head_fusion= (same meaning); heads= will be removed'
"""

from __future__ import annotations

import warnings
from typing import Any

UNSET: Any = object()
"""Default of a deprecated option: tells "not given" apart from any value (None included)."""


def renamed(where: str, old: str, new: str, *, old_value: Any, new_value: Any, default: Any) -> Any:
    """The value of option ``new`` when a caller may still pass it as ``old``.

    ``old_value`` is `UNSET` when the old name was not used; ``new_value`` equal to ``default`` counts
    as not given. Giving both is an error.
    """
    if old_value is UNSET:
        return new_value
    if new_value is not UNSET and new_value != default:
        raise TypeError(f"{where}: give {new}= only ({old}= is its old name), not both")
    warnings.warn(f"{where}: the option {old}= is now {new}= (same meaning); {old}= will be removed",
                  DeprecationWarning, stacklevel=3)
    return old_value
