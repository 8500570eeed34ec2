"""qa_core.processes: how a launched rank leaves."""
from __future__ import annotations

import pytest

from qa_core import processes


@pytest.mark.parametrize("rank,code,waits", [("1", 2, True), ("0", 2, False), ("1", 0, False)])
def test_a_failing_rank_other_than_0_gives_rank_0_time_to_print(monkeypatch, rank, code, waits):
    """The launcher stops every rank once one has ended: rank 1 leaving at once with the error
    both ranks met let it stop rank 0 before rank 0 printed the one error line (a CI run of the
    FSDP1-on-CPU refusal ended with no error line)."""
    events = []
    monkeypatch.setenv("LOCAL_RANK", rank)
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(processes.time, "sleep", lambda s: events.append(("sleep", s)))

    def fake_exit(value):
        events.append(("exit", value))
        raise SystemExit(value)

    monkeypatch.setattr(processes.os, "_exit", fake_exit)
    with pytest.raises(SystemExit):
        processes.leave_launched_process(code)
    expected = [("sleep", processes.REPORT_GRACE_SECONDS)] if waits else []
    assert events == expected + [("exit", code)]


def test_an_unlaunched_process_returns_its_code(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert processes.leave_launched_process(2) == 2
