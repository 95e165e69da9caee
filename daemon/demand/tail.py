"""A growing request log followed live: the `request-log` demand source.

The cursor is the whole state: the file's identity (device, inode), the byte
offset and line number read up to, the end of the last window emitted, and the
partial counts of windows not finished yet. `poll` reads from the committed
cursor and returns a new one; nothing moves until the tick has stored the
windows and the cursor in one transaction and calls `commit`. So a rolled-back
tick reads the same bytes again, and a restart resumes exactly where the store
says: no request counted twice, none skipped.

Rotation: when the path names another file (another inode, or other first
bytes), the old file is looked up by its inode in the same directory (logrotate renames it, e.g. to `requests.log.1`),
its remainder read, then the new file from its start. A file that shrank
(copytruncate) is read again from its start. Either case the daemon cannot
follow completely is reported as a problem, never silently.

Windows are aligned to multiples of `window_s` since the epoch. A window is
finished once `now` is past its end plus `lateness_s`: loggers that write a
request when it completes (a gateway does) stamp it with its arrival, up to a
request's duration late. A row older than the last emitted window is late: it
is counted in the problems and dropped, since its window is already stored.
"""

from __future__ import annotations

import math
import os
from datetime import datetime
from pathlib import Path
from typing import Literal

from daemon.demand.errors import DemandInputError
from daemon.demand.request_log import RequestRow, is_compressed, scan
from daemon.demand.source import DemandPoll, epoch, from_epoch
from daemon.domain import BucketGrid, DemandWindow, peaks_of_seconds

MAX_BYTES_PER_POLL = 64 << 20  # a long outage is caught up over several ticks, not in one read
# A file is known by its inode and its first bytes: a rotation that deletes the old file lets the
# new one reuse the inode (log shippers such as Filebeat fingerprint files for the same reason).
FINGERPRINT_BYTES = 256


class RequestLogTail:
    kind = "request-log"

    def __init__(self, service: str, path: str | Path, grid: BucketGrid, window_s: float, fmt: str = "auto",
                 columns: dict[str, str] | None = None, on_bad_row: Literal["skip", "reject"] = "skip",
                 lateness_s: float = 5.0, backfill_s: float | None = None, max_bytes: int = MAX_BYTES_PER_POLL):
        self.service, self.path, self.grid, self.window_s = service, Path(path), grid, window_s
        self.fmt, self.columns, self.on_bad_row = fmt, dict(columns or {}), on_bad_row
        self.lateness_s, self.backfill_s, self.max_bytes = lateness_s, backfill_s, max_bytes
        if is_compressed(self.path):
            raise DemandInputError(f"{self.path}: a compressed file cannot be tailed; replay it as a trace")
        self._cursor: dict = {}

    # -- the protocol ----------------------------------------------------------------

    def resume(self, cursor: dict | None) -> None:
        if cursor and cursor.get("path") == str(self.path):
            self._cursor = dict(cursor)

    def commit(self, poll: DemandPoll) -> None:
        self._cursor = dict(poll.cursor)

    def poll(self, now: datetime) -> DemandPoll:
        now_s = epoch(now)
        cur = self._cursor
        problems: list[str] = []
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            # Between a rotation's rename and the new file, or before the server's first
            # request: nothing to read yet. Config checks that the directory exists.
            return DemandPoll(self.service, (), dict(cur))
        except OSError as e:
            raise DemandInputError(f"{self.path}: cannot read: {e.strerror}") from None
        ident = [st.st_dev, st.st_ino]
        rows: list[RequestRow] = []
        bad = 0
        offset, line = int(cur.get("offset", 0)), int(cur.get("line", 0))
        head = cur.get("head")  # [n, sha1 of the first n bytes]: a new file that reused the inode differs
        same_inode = cur.get("ident") == ident
        if cur.get("ident") and same_inode and st.st_size < offset:
            problems.append(f"{self.path}: shrank from {offset} to {st.st_size} bytes (truncated); reading it again "
                            "from the start")
            offset = line = 0
            replaced = True
        elif cur.get("ident") and not same_inode:
            # Rotated by rename: the old file's rest first, found by its inode beside the new one.
            old = _find_by_inode(self.path.parent, cur["ident"])
            if old is not None:
                res = scan(old, self.fmt, self.columns, offset, line, complete=True, on_bad_row=self.on_bad_row,
                           service=self.service)
                rows += res.rows
                bad += res.bad_count
                problems += [str(b) for b in res.bad[:20]]
            else:
                problems.append(f"{self.path}: rotated, and the previous file (inode {cur['ident'][1]}) is gone; "
                                f"requests written to it after byte {offset} were not read")
            offset = line = 0
            replaced = True
        elif cur.get("ident") and head is not None and _fingerprint(self.path, head[0]) != head:
            problems.append(f"{self.path}: replaced by a new file (its first bytes changed); the previous file's "
                            f"requests after byte {offset} were not read")
            offset = line = 0
            replaced = True
        else:
            replaced = False
        res = scan(self.path, self.fmt, self.columns, offset, line, complete=False, on_bad_row=self.on_bad_row, service=self.service,
                   max_bytes=self.max_bytes)
        rows += res.rows
        bad += res.bad_count
        problems += [str(b) for b in res.bad[:20]]
        if res.bad_count > 20:
            problems.append(f"{self.path}: ... {res.bad_count - 20} more malformed rows skipped")
        windows, state, late = self._fold(rows, cur, now_s)
        if late:
            problems.append(f"{self.path}: {late} request(s) arrived after their window was stored (raise "
                            "lateness_s if the log is written when requests finish); not counted")
        if head is None or replaced or head[0] < FINGERPRINT_BYTES:
            head = _fingerprint(self.path, min(FINGERPRINT_BYTES, res.end_offset))
        new = {"path": str(self.path), "ident": ident, "head": head, "offset": res.end_offset, "line": res.end_line,
               **state}
        samples = tuple((r.request_bytes, r.input_tokens) for r in rows if r.request_bytes)
        return DemandPoll(self.service, tuple(windows), new, tuple(problems), bad, samples)

    # -- windows -------------------------------------------------------------------------

    def _fold(self, rows: list[RequestRow], cur: dict, now_s: float):
        w = self.window_s
        emitted = cur.get("emitted_until")
        last_k = cur.get("last_row_k")
        # partial window k: [counts, input tokens, output tokens, requests per second of the window
        # (for its burst peaks; absent in cursors written before there were peaks)]
        partial: dict[int, list] = {int(k): [[list(r) for r in v[0]], v[1], v[2]] + ([list(v[3])] if len(v) > 3 else [])
                                    for k, v in (cur.get("partial") or {}).items()}
        n_s = max(int(math.floor(w)), 1)
        floor = now_s - self.backfill_s if (self.backfill_s is not None and emitted is None) else None
        late = 0
        for r in rows:
            if emitted is not None and r.timestamp < emitted:
                late += 1
                continue
            if floor is not None and r.timestamp < floor:
                continue  # history older than the daemon keeps: a first start on a long log
            k = math.floor(r.timestamp / w)
            acc = partial.get(k)
            if acc is None:
                acc = partial[k] = [[[0.0] * self.grid.n_output for _ in range(self.grid.n_input)], 0.0, 0.0,
                                    [0] * n_s]
            i, j = self.grid.locate(r.input_tokens, r.output_tokens)
            acc[0][i][j] += 1
            acc[1] += r.input_tokens
            acc[2] += r.output_tokens
            if len(acc) > 3:
                acc[3][min(max(int(r.timestamp - k * w), 0), n_s - 1)] += 1
            last_k = k if last_k is None else max(last_k, k)
        finished_k = math.floor((now_s - self.lateness_s) / w) - 1  # last window whose end + lateness passed
        windows: list[DemandWindow] = []
        if last_k is not None:
            first = int(round(emitted / w)) if emitted is not None else min(partial, default=last_k + 1)
            upto = min(finished_k, last_k)  # a quiet tail stays unobserved until the next request shows up
            zero = tuple(tuple(0.0 for _ in range(self.grid.n_output)) for _ in range(self.grid.n_input))
            for k in range(first, upto + 1):
                acc = partial.pop(k, None)
                if acc is None:
                    windows.append(DemandWindow(self.service, from_epoch(k * w), w, zero, 0.0, 0.0))
                else:
                    windows.append(DemandWindow(self.service, from_epoch(k * w), w,
                                                tuple(tuple(float(c) for c in row) for row in acc[0]), acc[1], acc[2],
                                                peaks_of_seconds(acc[3]) if len(acc) > 3 else ()))
            if windows:
                emitted = (upto + 1) * w
        state = {"emitted_until": emitted, "last_row_k": last_k,
                 "partial": {str(k): v for k, v in sorted(partial.items())}}
        return windows, state, late


def _fingerprint(path: Path, n: int) -> list:
    import hashlib

    try:
        with open(path, "rb") as f:
            data = f.read(n)
    except OSError:
        return [n, None]
    return [len(data), hashlib.sha1(data).hexdigest()]


def _find_by_inode(directory: Path, ident: list[int]) -> Path | None:
    try:
        for p in directory.iterdir():
            try:
                st = p.stat()
            except OSError:
                continue
            if [st.st_dev, st.st_ino] == list(ident) and p.is_file():
                return p
    except OSError:
        return None
    return None
