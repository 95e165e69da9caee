"""Plain-text tables that fit the terminal and never cut a name.

Every column but the last is as wide as its widest cell; the last column takes
what is left of the line and, when a cell does not fit, continues on the next
line(s) under itself (folded at spaces or `/`, never shortened with an ellipsis).
When even that leaves the last column too narrow, the row continues on an
indented second line. Standard library only: `fleetctl status` must start fast.
"""

from __future__ import annotations

import shutil


def terminal_width(default: int = 100) -> int:
    """COLUMNS when set (as `COLUMNS=80 fleetctl status`), else the terminal's, else `default`."""
    return shutil.get_terminal_size((default, 24)).columns


def _fold(text: str, width: int) -> list[str]:
    """Split `text` into pieces of at most `width`, preferring breaks after a space or '/'."""
    if width <= 0 or len(text) <= width:
        return [text]
    out, rest = [], text
    while len(rest) > width:
        cut = max(rest.rfind(" ", 0, width + 1), rest.rfind("/", 0, width))
        cut = cut + 1 if cut > 0 else width
        out.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        out.append(rest)
    return out


def _fits(headers: list[str], cells: list[list[str]], width: int, gap: int) -> bool:
    n = len(headers)
    return sum(max([len(headers[i])] + [len(r[i]) for r in cells]) for i in range(n)) + gap * (n - 1) <= width


def _blocks(headers: list[str], cells: list[list[str]], width: int, right, gap: int) -> list[list[str]]:
    """The header and each row as a list of lines (a row folds onto several when its last cell is long)."""
    n = len(headers)
    widths = [max([len(headers[i])] + [len(r[i]) for r in cells]) for i in range(n)]
    fixed = sum(widths[:-1]) + gap * (n - 1)
    last_room = width - fixed
    sep = " " * gap

    def block(r: list[str]) -> list[str]:
        head = [r[i].rjust(widths[i]) if i in right else r[i].ljust(widths[i]) for i in range(n - 1)]
        prefix = sep.join(head) + (sep if n > 1 else "")
        last = r[-1]
        if len(prefix) + len(last) <= width:
            return [(prefix + last).rstrip()]
        if last_room >= max(12, min(len(last), 20)):
            parts = _fold(last, last_room)
            pad = " " * len(prefix)
            return [(prefix + parts[0]).rstrip()] + [pad + p for p in parts[1:]]
        # too little room beside the fixed columns: the last cell goes on its own indented line(s)
        return [prefix.rstrip()] + ["    " + p for p in _fold(last, width - 4)]

    return [block(headers)] + [block(r) for r in cells]


def render(headers: list[str], rows: list[list[str]], width: int | None = None,
           right: frozenset[int] | set[int] = frozenset(), gap: int = 2, split: int | None = None) -> str:
    """The table as text lines of at most `width` characters (except a single word longer than a line).

    `split`: when the whole table does not fit, each row becomes two parts: the first
    `split` columns (the names) on a line, the others indented below them (the figures).
    """
    width = width or terminal_width()
    cells = [[str(c) for c in r] for r in rows]
    if split is not None and 0 < split < len(headers) and not _fits(headers, cells, width, gap):
        name_cells = [headers[:split]] + [r[:split] for r in cells]
        if _fits(headers[:split], [r[:split] for r in cells], width, gap):
            names = _blocks(headers[:split], [r[:split] for r in cells], width, set(), gap)
        else:
            names = [_fold(" ".join(x), width) for x in name_cells]
        rest = _blocks(headers[split:], [r[split:] for r in cells], width - 4,
                       {i - split for i in right if i >= split}, gap)
        return "\n".join(line for a, b in zip(names, rest) for line in a + ["    " + x for x in b])
    return "\n".join(line for b in _blocks(headers, cells, width, right, gap) for line in b)
