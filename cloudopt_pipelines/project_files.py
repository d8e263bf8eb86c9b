"""The files the package ships besides code: the SQL models and the default constraints file.

In the checkout they live at the top (``dbt_like_sql/``, ``config/constraints.yaml``: the project's
layout) and ``cloudopt_pipelines/_sql`` and ``cloudopt_pipelines/_config`` link to them; the wheel holds
those two folders as files (``[tool.setuptools.package-data]``). The functions below find them in either
case, so ``pip install .`` and a checkout run the same models. This module never imports Dagster.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_DIR = PACKAGE_DIR.parent


class ProjectFileError(FileNotFoundError):
    """A file the package ships is missing; the message says where it was looked for and the fix."""


def sql_models_dir() -> Path:
    """The folder of the SQL models (``marts/`` inside it); an error if it is missing or holds no model."""
    candidates = [PACKAGE_DIR / "_sql", CHECKOUT_DIR / "dbt_like_sql"]
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        raise ProjectFileError(
            f"the SQL models folder is missing (looked in {', '.join(map(str, candidates))}): reinstall "
            "cloudopt-pipelines (its wheel ships them as cloudopt_pipelines/_sql), or restore dbt_like_sql/ "
            "and the link cloudopt_pipelines/_sql -> ../dbt_like_sql in a checkout"
        )
    if not any(folder.glob("*.sql")):
        raise ProjectFileError(
            f"the SQL models folder {folder} holds no *.sql model: reinstall cloudopt-pipelines, or restore "
            "the models of dbt_like_sql/ in a checkout (git checkout -- dbt_like_sql)"
        )
    return folder.resolve()  # in a checkout: dbt_like_sql/ itself, as people know it


def marts_dir() -> Path:
    """The folder of the warehouse marts (``dbt_like_sql/marts``)."""
    return sql_models_dir() / "marts"


def default_constraints_path() -> Path:
    """The default constraints file of the portfolio plan (``config/constraints.yaml``). Not checked here:
    the plan's config loader says clearly when the file it was given is missing."""
    candidates = [PACKAGE_DIR / "_config" / "constraints.yaml", CHECKOUT_DIR / "config" / "constraints.yaml"]
    return next((c for c in candidates if c.is_file()), candidates[0]).resolve()
