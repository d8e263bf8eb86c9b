"""Installs the kill hook of ``tests/kill_at.py`` in every Python process a killed command starts."""

import os

if os.environ.get("CLOUDOPT_KILL_AT"):
    from tests.kill_at import install

    install(os.environ["CLOUDOPT_KILL_AT"])
