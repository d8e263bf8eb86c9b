"""A code location over a generated fleet, for tests whose daemon must serve more accounts than the demo's two.

``CLOUDOPT_TEST_FLEET_DIR`` names a demo data folder written by ``cloudopt_pipelines.bench.e2e.build_fleet``
(the demo's real traces under new ids); everything else is the package's own definitions, with the
deployment's executor.
"""

import os

import dagster as dg

from cloudopt_pipelines.bench.e2e import ScaledDemoSource
from cloudopt_pipelines.definitions import build_definitions, with_run_executor


@dg.definitions
def defs() -> dg.Definitions:
    source = ScaledDemoSource(data_dir=os.environ["CLOUDOPT_TEST_FLEET_DIR"])
    return with_run_executor(build_definitions(source=source))
