"""Small facts about this machine that tests need."""

from __future__ import annotations

import grp


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True
