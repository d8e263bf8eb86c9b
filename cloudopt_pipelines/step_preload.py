"""What the step processes' forkserver imports once (``instance.PRELOADED_MODULES``), so that no forked step
pays for it again: the pipeline's modules, the optimisers the definitions import on first use, and the
parse of the shipped SQL models (sqlglot, about a third of a second), which each step's rebuild of the
definitions then reads from its cache."""

import contextlib

import cloudopt_pipelines.definitions  # noqa: F401 - imported for the forks
from cloudopt_pipelines.assets.features import SOURCE_TABLES
from cloudopt_pipelines.optimizers.base import all_optimizers
from cloudopt_pipelines.project_files import sql_models_dir
from cloudopt_pipelines.sqlmodels.runner import ModelError, load_models

all_optimizers()
# A model that does not parse fails in the step, with its own error, not in the forkserver.
with contextlib.suppress(ModelError, OSError):
    load_models(sql_models_dir(), set(SOURCE_TABLES))
