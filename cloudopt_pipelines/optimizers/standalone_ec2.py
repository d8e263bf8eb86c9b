"""The standalone EC2 optimiser behind the shared interface: instances that belong to no group or cluster,
plus the account's orphaned EBS volumes and Elastic IPs (pure code, no Dagster)."""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from cloudopt_pipelines.optimizers.base import DeploymentOptimizer, FeatureInput, OptimizerInputs, Recommendations
from cloudopt_pipelines.optimizers.portfolio import Candidate, candidates_from_recommendations
from cloudopt_pipelines.optimizers.sizing import (
    ARCHITECTURE_PREFERENCES,
    DEFAULT_MAX_BEST_RISK,
    DEFAULT_RISK_SETTING,
    RISK_SETTINGS,
)
from cloudopt_pipelines.optimizers.standalone import (
    HYSTERESIS_RISK,
    HYSTERESIS_SAVINGS_PCT,
    STANDALONE_FEATURE_INPUTS,
    StandaloneConfig,
    recommend_account,
    recommendations_summary,
)
from cloudopt_pipelines.optimizers.standalone_actions import SPOT_WORKLOAD_VALUES
from cloudopt_pipelines.vocabulary import EBS_VOLUME, EC2_INSTANCE, ELASTIC_IP, ENVIRONMENT_TAG_KEYS, STANDALONE

ORPHAN_KINDS = (EBS_VOLUME, ELASTIC_IP)


class StandaloneSettings(BaseModel):
    """Settings of the standalone EC2 optimiser; the asset's run configuration is derived from this model."""

    risk_setting: str = Field(
        default=DEFAULT_RISK_SETTING, description=f"One of {', '.join(RISK_SETTINGS)} (see docs/standalone.md)."
    )
    environment_tag_keys: list[str] = Field(
        default=list(ENVIRONMENT_TAG_KEYS), description="Tags that say whether a resource is production."
    )
    spot_workload_values: list[str] = Field(
        default=list(SPOT_WORKLOAD_VALUES), description="Values of tag 'workload' that allow Spot."
    )
    schedule_idle_cpu_pct: float = Field(
        default=5.0, ge=0, le=100, description="Peak CPU % at or under which an hour of the week counts as idle."
    )
    max_best_risk: float = Field(
        default=DEFAULT_MAX_BEST_RISK,
        ge=0,
        le=4,
        description="Highest performance risk (0-4) the best option may have; 1 = the window's maximum fits.",
    )
    architecture: str = Field(
        default="current",
        description=(
            "CPU architecture of the best option: 'current' keeps it (Compute Optimizer's CURRENT preference; the "
            "Graviton option is still listed), 'any' lets a cheaper other-architecture type be best."
        ),
    )
    commitment_terms: list[int] = Field(default=[1, 3], description="Commitment terms (years) to quote.")
    hysteresis_savings_pct: float = Field(
        default=HYSTERESIS_SAVINGS_PCT,
        ge=0,
        le=100,
        description=(
            "Yesterday's best option stays best unless today's changes the saving by more than this % of the "
            "current monthly cost (0 with hysteresis_risk 0: no hysteresis)."
        ),
    )
    hysteresis_risk: float = Field(
        default=HYSTERESIS_RISK,
        ge=0,
        le=4,
        description="Yesterday's best option also gives way when today's risk differs by at least this much.",
    )


class StandaloneEc2Optimizer(DeploymentOptimizer):
    """Right-sizing, off-hours schedules, Spot, idle instances and commitments for standalone EC2
    instances; deletion of unattached EBS volumes and release of idle Elastic IPs."""

    name: ClassVar[str] = "standalone_ec2"
    deployment_types: ClassVar[tuple[str, ...]] = (STANDALONE,)
    resource_kinds: ClassVar[tuple[str, ...]] = (EC2_INSTANCE, *ORPHAN_KINDS)
    inputs: ClassVar[tuple[FeatureInput, ...]] = tuple(
        FeatureInput(table, window_days=days) for table, days in STANDALONE_FEATURE_INPUTS.items()
    )
    settings_type: ClassVar[type[BaseModel]] = StandaloneSettings
    reads_previous_day: ClassVar[bool] = True
    description: ClassVar[str] = (
        "Right-sizing, schedules, Spot, idle and commitment options for every standalone EC2 instance of one "
        "account (never group or cluster members), plus unattached EBS volumes and idle Elastic IPs."
    )

    def select(self, inventory: pa.Table) -> pa.Table:
        """Standalone instances, and volumes and addresses whatever their deployment type (they are orphans
        of the account, not members of a cluster)."""
        if inventory.num_rows == 0:
            return inventory
        instances = pc.and_(
            pc.equal(inventory["resource_kind"], EC2_INSTANCE),
            pc.is_in(inventory["deployment_type"], pa.array(self.deployment_types)),
        )
        orphans = pc.is_in(inventory["resource_kind"], pa.array(ORPHAN_KINDS))
        return inventory.filter(pc.fill_null(pc.or_(instances, orphans), False))

    def config(self, settings: BaseModel) -> StandaloneConfig:
        s = settings if isinstance(settings, StandaloneSettings) else StandaloneSettings.model_validate(settings)
        if s.architecture not in ARCHITECTURE_PREFERENCES:
            raise ValueError(
                f"standalone setting architecture={s.architecture!r}: use one of {', '.join(ARCHITECTURE_PREFERENCES)}"
            )
        return StandaloneConfig(
            risk_setting=s.risk_setting,
            window_days=max(i.window_days for i in self.inputs),
            environment_tag_keys=tuple(s.environment_tag_keys),
            spot_workload_values=tuple(s.spot_workload_values),
            schedule_idle_cpu_pct=s.schedule_idle_cpu_pct,
            max_best_risk=s.max_best_risk,
            architecture=s.architecture,
            commitment_terms=tuple(s.commitment_terms),
            hysteresis_savings_pct=s.hysteresis_savings_pct,
            hysteresis_risk=s.hysteresis_risk,
        )

    def recommend(self, inputs: OptimizerInputs, settings: BaseModel) -> Recommendations:
        """Every option of every standalone instance and orphan of the account; the metadata carries the
        commitment purchases and ``notes``: the resources left out (attributes off the schema), and why."""
        result = recommend_account(
            inputs.account_id,
            inputs.day,
            self.select(inputs.inventory),
            inputs.tables,
            inputs.catalog,
            inputs.reserved,
            self.config(settings),
            previous=inputs.previous,
        )
        return Recommendations(
            table=result.table,
            summary=recommendations_summary(result.table),
            metadata={"commitments": result.commitments_table(), "notes": list(result.notes)},
        )

    def candidates(self, recommendations: pa.Table) -> list[Candidate]:
        return candidates_from_recommendations(recommendations, source=self.name)
