"""cloudopt_pipelines: cloud-cost optimisation on Dagster.

Raw metrics become utilisation features, recommendations per deployment type, a
linear-programming portfolio plan and safely executed actions.
"""

__version__ = "0.1.0"
