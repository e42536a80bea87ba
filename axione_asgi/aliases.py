"""Model aliases: other names for `provider/model` ids, exact or with one `*`."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["Aliases", "match_glob"]


def match_glob(pattern: str, name: str) -> str | None:
    """What the pattern's one `*` stands for in `name`, or None when it does not match."""
    head, star, tail = pattern.partition("*")
    if not star:
        return None
    if len(name) >= len(head) + len(tail) and name.startswith(head) and name.endswith(tail):
        return name[len(head) : len(name) - len(tail)]
    return None


class Aliases:
    """`[aliases]` of the config (SPEC 9): exact names first, then globs in file order.

    A `*` in the target stands for what the pattern's `*` matched, so
    `"claude-*" = "anthropic/claude-*"` sends `claude-sonnet-4-5` to
    `anthropic/claude-sonnet-4-5`.
    """

    def __init__(self, table: Mapping[str, str] | None = None) -> None:
        table = table or {}
        self.exact = {k: v for k, v in table.items() if "*" not in k}
        self.globs = [(k, v) for k, v in table.items() if "*" in k]

    def target(self, name: str) -> str | None:
        """The `provider/model` id `name` stands for, or None when it is no alias."""
        found = self.exact.get(name)
        if found is not None:
            return found
        for pattern, target in self.globs:
            matched = match_glob(pattern, name)
            if matched is not None:
                return target.replace("*", matched)
        return None
