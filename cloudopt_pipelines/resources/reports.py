"""Where the savings reports are written."""

from pathlib import Path

import dagster as dg
from pydantic import Field


class ReportsResource(dg.ConfigurableResource):
    """The folder of the savings reports, ``$CLOUDOPT_HOME/reports``: one sub-folder per day."""

    root: str = Field(description="Directory of the reports (default: $CLOUDOPT_HOME/reports).")

    def get_root(self) -> Path:
        return Path(self.root)
