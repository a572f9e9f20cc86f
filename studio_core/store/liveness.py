"""Whether the process that wrote a ``running`` row still runs it: a killed server's runs are marked
``interrupted`` at the next start, also when a newer process has been given the dead one's pid."""

from __future__ import annotations

import datetime as _dt

__all__ = ["pid_taken_over", "run_process_ended"]

PID_CLOCK_SLACK_S = 2.0  # psutil's process start times rest on a boot time kept in whole seconds


def pid_taken_over(pid: int, since: str) -> bool:
    """Whether ``pid`` now belongs to a process started after ``since`` (the ISO time a row was
    written): the process that wrote the row has ended and another one got its number."""
    import psutil

    try:
        started = psutil.Process(pid).create_time()
        written = _dt.datetime.fromisoformat(since).timestamp()
    except (psutil.Error, TypeError, ValueError):  # gone (callers check that first), or no time
        return False
    return started > written + PID_CLOCK_SLACK_S


def run_process_ended(pid: int | None, created_at: str | None) -> str | None:
    """Why the process that wrote a ``running`` row (at ``created_at``) no longer runs it, or None."""
    import psutil

    ended = f"process {pid} ended during the run (killed or crashed"
    if not (pid and psutil.pid_exists(pid)):
        return ended + ")"
    if pid_taken_over(pid, created_at):
        return f"{ended}); pid {pid} now belongs to a process started after the run"
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return ended + "; a zombie not yet reaped)"
    except psutil.Error:
        pass
    return None
