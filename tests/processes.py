"""The end of a process a test started (a daemon, a server)."""

import subprocess


def terminate(process: subprocess.Popen, grace_s: float = 60) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``grace_s`` (the bound is for a hung process, not a speed)."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
