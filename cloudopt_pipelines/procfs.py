"""Linux's ``/proc``: the fields of a process's stat line, read the one way that survives any command name."""

from pathlib import Path

PARENT_PID = 1
START_TICKS = 19


def stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, which may hold spaces and parentheses
    (``[PARENT_PID]``, ``[START_TICKS]``: start time in clock ticks since boot); None without that process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()
