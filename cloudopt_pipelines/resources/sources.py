"""The source of inventory and metrics, chosen by CLOUDOPT_ENV."""

import dagster as dg

from cloudopt_pipelines.sources.base import Collector
from cloudopt_pipelines.sources.demo import DemoCollector


class SourceResource(dg.ConfigurableResource):
    """Where inventory and metrics come from; subclasses give the collector."""

    def get_collector(self) -> Collector:
        raise NotImplementedError(f"{type(self).__name__} must implement get_collector()")


class DemoSourceResource(SourceResource):
    """The embedded demo fleet: two accounts replaying real public VM traces for fourteen days."""

    def get_collector(self) -> Collector:
        return DemoCollector()
