"""The optimisers' public API: pure logic, no Dagster."""

from cloudopt_pipelines.optimizers.linear import LinearOptimizer, Option, Resource, Solution, check_plan, pareto_sweep
from cloudopt_pipelines.optimizers.schedules import recommend_schedule
from cloudopt_pipelines.optimizers.sizing import analyze_utilization, recommend_resize
from cloudopt_pipelines.optimizers.standalone import optimize_standalone_instance, recommend_account

__all__ = [
    "LinearOptimizer",
    "Option",
    "Resource",
    "Solution",
    "analyze_utilization",
    "check_plan",
    "optimize_standalone_instance",
    "pareto_sweep",
    "recommend_account",
    "recommend_resize",
    "recommend_schedule",
]
