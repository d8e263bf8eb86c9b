"""Run the `cloudopt` command with a SIGKILL at one write point: ``python tests/kill_at.py POINT ARGS...``.

POINT is a lake table (the writer dies once that table's new partition is staged, fsynced and digested,
just before it is swapped in) or ``warehouse`` (once the new warehouse is built aside, just before it
replaces the old one). ``cloudopt run`` writes in the run workers its launcher starts, so the hook is
installed in every Python process of the command (``tests/kill_hook/sitecustomize.py``, through
``PYTHONPATH`` and ``CLOUDOPT_KILL_AT``), and the process that reaches the point kills its whole process
group: the command, its code server and its run workers die together, as on a lost machine. Before dying
it writes ``POINT`` to ``$CLOUDOPT_HOME/killed_at``, so a test can tell the kill at the hook from a crash
anywhere else. Nothing of the code under test changes: the hook wraps the real functions and calls them
until the point is reached. Start the command in a session of its own (``start_new_session=True``).

With ``CLOUDOPT_KILL_SCOPE=process`` (a daemon's environment: its run workers share its process group)
only the process that reaches the point dies, and only the first one: it claims ``killed_at`` before
dying, and every later process passes the point, so the daemon lives on and the retry it runs succeeds.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

POINT_VAR = "CLOUDOPT_KILL_AT"
SCOPE_VAR = "CLOUDOPT_KILL_SCOPE"
HOOK_DIR = Path(__file__).with_name("kill_hook")
WAREHOUSE_TEMP = re.compile(r"^\.warehouse\.duckdb\.[0-9a-f]+\.tmp$")


def _die(point: str) -> None:
    marker = Path(os.environ["CLOUDOPT_HOME"]) / "killed_at"
    if os.environ.get(SCOPE_VAR) == "process":
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # another process died here already: this one goes on
        os.write(fd, point.encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
    marker.write_text(point)
    os.killpg(os.getpgid(0), signal.SIGKILL)


def install(point: str) -> None:
    """Wrap the write function of ``point`` so the process group dies just before the swap."""
    if point == "warehouse":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if WAREHOUSE_TEMP.match(Path(src).name):
                _die(point)
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
        return
    from cloudopt_pipelines.storage import lake as lake_module

    real_swap = lake_module.Lake._swap_in

    def swap_in(self, stage: Path, live: Path) -> None:
        if live.relative_to(self.root).parts[0] == point:
            _die(point)
        real_swap(self, stage, live)

    lake_module.Lake._swap_in = swap_in


if __name__ == "__main__":
    os.environ[POINT_VAR] = sys.argv[1]
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HOOK_DIR), str(HOOK_DIR.parent.parent), os.environ.get("PYTHONPATH")) if p
    )
    install(sys.argv[1])
    from cloudopt_pipelines.cli import main

    sys.argv = ["cloudopt", *sys.argv[2:]]
    sys.exit(main())
