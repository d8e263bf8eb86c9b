"""The interface every deployment-type optimiser implements, and the registry that lists them.

Pure code, never Dagster: one factory in ``assets/recommendations.py`` turns each registered optimiser
into a ``recommendations/<name>`` asset that reads the feature tables the optimiser declares (over their
trailing windows), calls :meth:`DeploymentOptimizer.recommend` and writes the lake table
``recommendations_<name>``; the portfolio plan reads every selected optimiser's table and turns it into
LP candidates with :meth:`DeploymentOptimizer.candidates`, leaving out (and naming, with
:meth:`DeploymentOptimizer.unpriced`) the resources it cannot price.

Adding an optimiser: subclass :class:`DeploymentOptimizer`, give it a ``name``, the deployment types and
resource kinds it handles, its ``inputs`` and a pydantic ``settings_type``, implement ``select``,
``recommend`` and ``candidates`` (override ``unpriced`` only when its rows are priced another way), and
list it in :func:`all_optimizers`. Nothing else changes: the asset, its config, the plan's dependencies
and the warehouse's ``recommendations`` view follow.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from cloudopt_pipelines.optimizers.commitments import ReservedRates
from cloudopt_pipelines.optimizers.portfolio import Candidate, Unpriced, unpriceable_resources
from cloudopt_pipelines.optimizers.sizing import Catalog

RECOMMENDATIONS_TABLE_PREFIX = "recommendations_"


@dataclass(frozen=True)
class FeatureInput:
    """A lake table an optimiser reads, over a trailing window of days ending with the partition's day.

    ``stage`` is the asset-key prefix of the table's asset (``features`` for the SQL models, ``raw`` for
    collected tables). ``window_days=1`` reads the partition's own day; a longer window becomes a
    ``TimeWindowPartitionMapping`` on the asset, and days of the window with no partition are allowed
    (they lower the confidence, as the optimiser says).
    """

    table: str
    window_days: int = 1
    stage: str = "features"

    def __post_init__(self) -> None:
        if self.window_days < 1:
            raise ValueError(f"feature input {self.table!r}: window_days must be at least 1, got {self.window_days}")

    @property
    def asset_key_path(self) -> tuple[str, str]:
        return (self.stage, self.table)


@dataclass(frozen=True)
class OptimizerInputs:
    """Everything one optimiser run sees: the scope, the selected inventory, its feature tables and prices.

    ``tables`` holds one table per declared input (rows of every day of its window that exists,
    concatenated); ``days_found`` says which days those were. ``previous`` is this optimiser's own rows
    of the day before, for an optimiser that declares ``reads_previous_day`` (None on the first day, or
    when that day was never materialised).
    """

    account_id: str
    day: date
    inventory: pa.Table
    tables: Mapping[str, pa.Table]
    days_found: Mapping[str, tuple[date, ...]]
    catalog: Catalog
    reserved: ReservedRates | None = None
    previous: pa.Table | None = None


@dataclass(frozen=True)
class Recommendations:
    """An optimiser's answer: rows in the one ``RECOMMENDATIONS`` schema, numbers for the UI, and extra
    metadata (JSON-able) the asset shows as it is."""

    table: pa.Table
    summary: Mapping[str, float]
    metadata: Mapping[str, Any] = field(default_factory=dict)


class DeploymentOptimizer(ABC):
    """One deployment type's optimiser (standalone EC2, Kubernetes, clusters): see the module docstring."""

    name: ClassVar[str]
    deployment_types: ClassVar[tuple[str, ...]]
    resource_kinds: ClassVar[tuple[str, ...]]
    inputs: ClassVar[tuple[FeatureInput, ...]]
    settings_type: ClassVar[type[BaseModel]]
    description: ClassVar[str] = ""
    #: True: the asset depends on its own partition of the day before (same account) and passes its rows
    #: as ``OptimizerInputs.previous``, so the optimiser can keep yesterday's answer (hysteresis).
    reads_previous_day: ClassVar[bool] = False

    @property
    def table_name(self) -> str:
        """The lake table (and warehouse view) this optimiser writes."""
        return RECOMMENDATIONS_TABLE_PREFIX + self.name

    def select(self, inventory: pa.Table) -> pa.Table:
        """The inventory rows this optimiser handles: its deployment types and resource kinds."""
        if inventory.num_rows == 0:
            return inventory
        mask = pc.and_(
            pc.is_in(inventory["deployment_type"], pa.array(self.deployment_types)),
            pc.is_in(inventory["resource_kind"], pa.array(self.resource_kinds)),
        )
        return inventory.filter(pc.fill_null(mask, False))

    def default_settings(self) -> BaseModel:
        return self.settings_type()

    @abstractmethod
    def recommend(self, inputs: OptimizerInputs, settings: BaseModel) -> Recommendations:
        """Every option for every selected resource, one row per (resource, option)."""

    @abstractmethod
    def candidates(self, recommendations: pa.Table) -> list[Candidate]:
        """This optimiser's rows as portfolio-plan candidates (one per resource, its options)."""

    def unpriced(self, recommendations: pa.Table) -> list[Unpriced]:
        """The resources of this optimiser's rows the plan cannot price (an option without a finite cost
        within bounds), each with its reason; :meth:`candidates` must leave them out. The default reads
        the ``RECOMMENDATIONS`` cost columns."""
        return unpriceable_resources(recommendations, source=self.name)


class UnknownDeploymentTypeError(ValueError):
    """``CLOUDOPT_DEPLOYMENT_TYPES`` names a type no optimiser handles."""


def all_optimizers() -> tuple[DeploymentOptimizer, ...]:
    """Every registered optimiser, in the order the plan merges their candidates."""
    from cloudopt_pipelines.optimizers.clusters_optimizer import ClustersOptimizer
    from cloudopt_pipelines.optimizers.kubernetes import KubernetesOptimizer
    from cloudopt_pipelines.optimizers.standalone_ec2 import StandaloneEc2Optimizer

    return (StandaloneEc2Optimizer(), KubernetesOptimizer(), ClustersOptimizer())


def known_deployment_types(optimizers: Iterable[DeploymentOptimizer] | None = None) -> tuple[str, ...]:
    found: list[str] = []
    for optimizer in optimizers if optimizers is not None else all_optimizers():
        found.extend(t for t in optimizer.deployment_types if t not in found)
    return tuple(found)


def select_optimizers(
    deployment_types: Sequence[str] | None, optimizers: Sequence[DeploymentOptimizer] | None = None
) -> tuple[DeploymentOptimizer, ...]:
    """The optimisers that handle any of ``deployment_types`` (``None``: all of them).

    An unknown type is an error naming the known ones, never silently ignored.
    """
    registered = tuple(optimizers if optimizers is not None else all_optimizers())
    if deployment_types is None:
        return registered
    known = known_deployment_types(registered)
    unknown = [t for t in deployment_types if t not in known]
    if unknown:
        raise UnknownDeploymentTypeError(
            f"CLOUDOPT_DEPLOYMENT_TYPES names {', '.join(repr(t) for t in unknown)}, which no optimiser handles; "
            f"use any of {', '.join(known)} (comma-separated), or leave it unset for all"
        )
    wanted = set(deployment_types)
    return tuple(o for o in registered if wanted & set(o.deployment_types))


def optimizer_named(name: str, optimizers: Sequence[DeploymentOptimizer] | None = None) -> DeploymentOptimizer:
    for optimizer in optimizers if optimizers is not None else all_optimizers():
        if optimizer.name == name:
            return optimizer
    raise KeyError(f"no optimiser named {name!r}")
