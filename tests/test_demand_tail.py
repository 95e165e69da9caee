"""A growing request log followed live: windows, cursors that move only on commit, restarts, rotation."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import pytest

from daemon.demand.tail import RequestLogTail
from daemon.domain import BucketGrid

GRID = BucketGrid((0, 256, 1024, 4096, 16384), (0, 64, 256, 1024, 4096))
BASE = 1_700_000_040  # a minute boundary


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=timezone.utc)


def line(t, i=100, o=10) -> str:
    return json.dumps({"timestamp": int(t * 1000), "input_length": i, "output_length": o}) + "\n"


def append(p, *lines):
    with p.open("a") as f:
        f.writelines(lines)


def drain(tail, now):
    """Poll and commit, as the tick does once its transaction committed."""
    poll = tail.poll(at(now))
    tail.commit(poll)
    return poll


def test_finished_windows_including_empty_ones_and_nothing_twice(tmp_path):
    p = tmp_path / "req.jsonl"
    p.write_text(line(BASE + 1) + line(BASE + 2, 5000, 2000))
    tail = RequestLogTail("chat", p, GRID, 60.0, lateness_s=0.0)
    assert drain(tail, BASE + 30).windows == ()  # the first minute is not over
    wins = drain(tail, BASE + 61).windows
    assert len(wins) == 1 and wins[0].requests == 2
    assert wins[0].counts[0][0] == 1 and wins[0].counts[3][3] == 1
    append(p, line(BASE + 190))
    wins = drain(tail, BASE + 250).windows
    assert [w.requests for w in wins] == [0, 0, 1]  # minutes 2 and 3 had no request: observed zeros
    assert drain(tail, BASE + 250).windows == ()


def test_position_moves_only_on_commit_and_a_restart_resumes_from_the_cursor(tmp_path):
    p = tmp_path / "req.jsonl"
    p.write_text("".join(line(BASE + k) for k in range(0, 100, 2)))
    tail = RequestLogTail("chat", p, GRID, 60.0, lateness_s=0.0)
    first = tail.poll(at(BASE + 70))
    assert [w.requests for w in first.windows] == [30]
    # The tick's transaction rolled back: the next poll returns the same window.
    again = tail.poll(at(BASE + 70))
    assert [w.start for w in again.windows] == [w.start for w in first.windows]
    tail.commit(again)
    # Restart: a new tail from the stored cursor; requests written meanwhile are counted once.
    append(p, *(line(BASE + 100 + k) for k in range(0, 60, 2)))
    fresh = RequestLogTail("chat", p, GRID, 60.0, lateness_s=0.0)
    fresh.resume(json.loads(json.dumps(again.cursor)))  # the cursor survives the store's JSON
    later = drain(fresh, BASE + 200)
    assert [w.requests for w in later.windows] == [20 + 10, 20]
    total = sum(w.requests for w in first.windows + later.windows)
    assert total == 50 + 30  # every line written, once


def test_lateness_waits_for_requests_logged_when_they_finish(tmp_path):
    p = tmp_path / "req.jsonl"
    p.write_text(line(BASE + 50))
    tail = RequestLogTail("chat", p, GRID, 60.0, lateness_s=20.0)
    assert drain(tail, BASE + 65).windows == ()  # window ended 5 s ago: a request may still be in flight
    append(p, line(BASE + 55), line(BASE + 70))  # logged late, stamped with its arrival
    assert [w.requests for w in drain(tail, BASE + 81).windows] == [2]
    append(p, line(BASE + 30))  # later than lateness allows: reported, not counted
    poll = drain(tail, BASE + 200)
    assert [w.requests for w in poll.windows] == [1]
    assert any("after their window was stored" in m for m in poll.problems)


def test_rotation_by_rename_reads_the_old_files_rest_then_the_new_file(tmp_path):
    p = tmp_path / "req.jsonl"
    p.write_text(line(BASE + 1))
    tail = RequestLogTail("chat", p, GRID, 60.0, lateness_s=0.0)
    drain(tail, BASE + 10)
    append(p, line(BASE + 20), line(BASE + 30))  # written before the rotation, not yet read
    os.rename(p, tmp_path / "req.jsonl.1")
    p.write_text(line(BASE + 61) + line(BASE + 62))
    poll = drain(tail, BASE + 125)
    assert [w.requests for w in poll.windows] == [3, 2] and poll.problems == ()


def test_rotation_whose_old_file_is_gone_and_truncation_are_reported(tmp_path):
    p = tmp_path / "req.jsonl"
    p.write_text(line(BASE + 1))
    tail = RequestLogTail("chat", p, GRID, 60.0, lateness_s=0.0)
    drain(tail, BASE + 10)
    append(p, line(BASE + 20))
    os.unlink(p)  # rotated and deleted (or compressed) before we read its end
    p.write_text(line(BASE + 61))
    poll = drain(tail, BASE + 125)
    assert any("were not read" in m for m in poll.problems)  # inode reused or not: the lost rest is said
    assert [w.requests for w in poll.windows] == [1, 1]
    p.write_text(line(BASE + 130, 1, 1))  # copytruncate: same inode, shorter
    poll = drain(tail, BASE + 200)
    assert any("truncated" in m for m in poll.problems)
    assert sum(w.requests for w in poll.windows) == 1


def test_first_start_on_a_long_log_keeps_only_the_history_window(tmp_path):
    p = tmp_path / "req.jsonl"
    p.write_text("".join(line(BASE + 3600 * h) for h in range(48)))
    tail = RequestLogTail("chat", p, GRID, 60.0, lateness_s=0.0, backfill_s=6 * 3600)
    wins = drain(tail, BASE + 48 * 3600).windows
    assert sum(w.requests for w in wins) == 6  # hours 42..47
    assert wins[0].start == at(BASE + 42 * 3600)


def test_compressed_file_cannot_be_tailed(tmp_path):
    from daemon.demand.errors import DemandInputError

    with pytest.raises(DemandInputError, match="cannot be tailed"):
        RequestLogTail("chat", tmp_path / "x.jsonl.gz", GRID, 60.0)
