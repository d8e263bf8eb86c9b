"""The Kubernetes API stand-in lives in ``cloudopt_pipelines/testing/k8s_apiserver.py`` (the demo serves its
cluster through it too); the tests import it from here."""

from cloudopt_pipelines.testing.k8s_apiserver import FakeApiServer, Kind, Store, merge_patch, strategic_merge_patch

__all__ = ["FakeApiServer", "Kind", "Store", "merge_patch", "strategic_merge_patch"]
