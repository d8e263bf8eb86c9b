"""Secrets in resource config: always a ``dg.EnvVar``, so that the value is never part of the definitions."""

import dagster as dg


def secret_from_env(variable: str, is_set: bool) -> dg.EnvVar | None:
    """``dg.EnvVar(variable)`` when the variable is set (Dagster reads it at run time), else None."""
    return dg.EnvVar(variable) if is_set else None


def resolved(value: str | None) -> str | None:
    """A config value as the code can use it. Inside a run Dagster has already read an ``EnvVar``; a
    resource used directly (``cloudopt run`` listing accounts, ``cloudopt rollback``) reads it now."""
    return value.get_value() if isinstance(value, dg.EnvVar) else value
