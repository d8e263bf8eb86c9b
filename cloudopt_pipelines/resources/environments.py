"""The resources of each environment in one table, chosen once by ``CLOUDOPT_ENV``.

Sources sit side by side: each source of ``CLOUDOPT_SOURCES`` has its own resource key and an
implementation per environment (``SOURCE_KEYS`` and the ``sources`` table below); the Kubernetes source
adds its row there. Secrets enter only as ``dg.EnvVar`` (see ``secrets.py``).
"""

from __future__ import annotations

import dagster as dg

from cloudopt_pipelines.resources.aws import AwsResource
from cloudopt_pipelines.resources.executor import AwsExecutorResource, KubernetesExecutorResource
from cloudopt_pipelines.resources.reports import ReportsResource
from cloudopt_pipelines.resources.sources import DemoSourceResource
from cloudopt_pipelines.resources.storage import LakeResource, WarehouseResource
from cloudopt_pipelines.settings import ENVIRONMENTS, Settings

#: The resource key each source's assets ask for (the raw stage's ``source`` is the AWS-shaped one).
SOURCE_KEYS = {"aws": "source"}


def resources_by_env(settings: Settings) -> dict[str, dict[str, dg.ConfigurableResource]]:
    """Every environment's resources: storage under ``CLOUDOPT_HOME``, one resource per configured
    source, and the executor's own AWS access (dry run unless a run asks to apply)."""
    storage = {
        "lake": LakeResource(root=settings.lake_url),
        "warehouse": WarehouseResource(path=str(settings.warehouse_path)),
        "reports": ReportsResource(root=str(settings.reports_dir)),
    }
    executor = {
        "aws_executor": AwsExecutorResource.from_settings(settings, home=settings.home),
        "k8s_executor": KubernetesExecutorResource.from_settings(settings),
    }
    sources: dict[str, dict[str, dg.ConfigurableResource]] = {
        "demo": {"aws": DemoSourceResource()},
        "aws": {"aws": AwsResource.from_settings(settings.aws)},
    }
    return {
        env: {**storage, **{SOURCE_KEYS[name]: sources[env][name] for name in settings.sources}, **executor}
        for env in ENVIRONMENTS
    }


def resources_for(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The resources of ``settings.env``."""
    return resources_by_env(settings)[settings.env]
