"""The stat line of /proc is read past the command name, whatever that name holds."""

import os
import subprocess
import sys

from cloudopt_pipelines.procfs import PARENT_PID, START_TICKS, stat_fields


def test_a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() -> None:
    rename = "open('/proc/self/comm', 'w').write('a) b (c'); import sys; print('ready', flush=True); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", rename], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with open(f"/proc/{child.pid}/comm") as comm:
            assert comm.read().strip() == "a) b (c"
        fields = stat_fields(child.pid)
        assert fields is not None
        assert int(fields[PARENT_PID]) == os.getpid()
        assert fields[START_TICKS].isdigit()
    finally:
        child.kill()
        child.wait()


def test_a_process_that_is_gone_has_no_fields() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert stat_fields(child.pid) is None
