"""Run the `cloudopt` command with a SIGKILL at one write point: ``python tests/kill_at.py POINT ARGS...``.

POINT is a lake table (the process kills itself once that table's new partition is staged, fsynced and
digested, just before it is swapped in) or ``warehouse`` (once the new warehouse is built aside, just
before it replaces the old one). Before dying it writes ``POINT`` to ``$CLOUDOPT_HOME/killed_at``, so a
test can tell the kill at the hook from a crash anywhere else. Nothing of the code under test changes:
the hook wraps the real functions and calls them until the point is reached.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

POINT = sys.argv[1]
HOME = Path(os.environ["CLOUDOPT_HOME"])
WAREHOUSE_TEMP = re.compile(r"^\.warehouse\.duckdb\.[0-9a-f]+\.tmp$")


def _die() -> None:
    (HOME / "killed_at").write_text(POINT)
    os.kill(os.getpid(), signal.SIGKILL)


def _install() -> None:
    from cloudopt_pipelines.storage import lake as lake_module

    if POINT == "warehouse":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if WAREHOUSE_TEMP.match(Path(src).name):
                _die()
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
        return
    real_swap = lake_module.Lake._swap_in

    def swap_in(self, stage: Path, live: Path) -> None:
        if live.relative_to(self.root).parts[0] == POINT:
            _die()
        real_swap(self, stage, live)

    lake_module.Lake._swap_in = swap_in


if __name__ == "__main__":
    _install()
    from cloudopt_pipelines.cli import main

    sys.argv = ["cloudopt", *sys.argv[2:]]
    sys.exit(main())
