"""What the step processes' forkserver imports once (``instance.PRELOADED_MODULES``), so that no forked step
pays for it again: the pipeline's modules, the optimisers the definitions import on first use, and the
parse of the shipped SQL models (sqlglot, about a third of a second), which each step's rebuild of the
definitions then reads from its cache."""

import contextlib

import cloudopt_pipelines.definitions  # noqa: F401 - imported for the forks
from cloudopt_pipelines.assets.features import SOURCE_TABLES
from cloudopt_pipelines.optimizers.base import all_optimizers
from cloudopt_pipelines.project_files import sql_models_dir
from cloudopt_pipelines.sqlmodels.runner import load_models

# Only a head start: whatever fails here (a model that does not parse, a file being replaced) fails in the
# step with its own error. The forkserver survives only an ImportError of its preload, so nothing escapes.
with contextlib.suppress(Exception):
    all_optimizers()
    load_models(sql_models_dir(), set(SOURCE_TABLES))
