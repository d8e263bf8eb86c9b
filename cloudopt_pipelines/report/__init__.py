"""The savings report of one day: tables, charts and a self-contained HTML page (no Dagster here).

``tables.py`` turns the day's plan, candidates, activity profiles and executed actions into the report's
tables; ``charts.py`` draws them with matplotlib; ``render.py`` writes the HTML page, the PNG summary and
the CSV/JSON exports into one folder, swapped in whole. The asset ``reports/savings_report``
(``assets/report.py``) reads the lake and calls :func:`write_report`.
"""

from cloudopt_pipelines.report.render import ReportFiles, write_report
from cloudopt_pipelines.report.tables import CapacityView, ReportInputs, ReportTables, build_tables

__all__ = ["CapacityView", "ReportFiles", "ReportInputs", "ReportTables", "build_tables", "write_report"]
