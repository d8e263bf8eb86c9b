"""Resources for the Parquet lake and the DuckDB warehouse."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
from pydantic import Field

from cloudopt_pipelines.project_files import marts_dir
from cloudopt_pipelines.storage.lake import Lake, open_lake
from cloudopt_pipelines.storage.warehouse import WarehouseBuild, build_warehouse, read_only


class LakeResource(dg.ConfigurableResource):
    """The Parquet lake at ``CLOUDOPT_LAKE_URL`` (default ``$CLOUDOPT_HOME/lake``): partitions replaced atomically."""

    root: str = Field(
        description="Directory of the lake or s3://bucket/prefix (default: CLOUDOPT_LAKE_URL or $CLOUDOPT_HOME/lake)."
    )

    def get_lake(self) -> Lake:
        return open_lake(self.root)


class WarehouseResource(dg.ConfigurableResource):
    """The analysts' DuckDB warehouse: views over the lake plus the marts of ``dbt_like_sql/marts``."""

    path: str = Field(description="Path of the DuckDB file (default: $CLOUDOPT_HOME/warehouse.duckdb).")
    marts_dir: str | None = Field(
        default=None, description="Directory of the mart SQL files (default: dbt_like_sql/marts, as installed)."
    )

    def rebuild(self, lake: Lake, should_stop: Callable[[], bool] | None = None) -> WarehouseBuild:
        """Rebuild the warehouse from the lake and the marts (a new file swapped in atomically);
        ``should_stop`` ends a wait for another writer's lock."""
        marts = Path(self.marts_dir) if self.marts_dir else marts_dir()
        return build_warehouse(lake, Path(self.path), marts, should_stop=should_stop)

    @contextmanager
    def get_connection(self, lake: Lake | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection, as analysts open it (``lake``: an S3 lake's, default the folder beside)."""
        with read_only(Path(self.path), lake) as con:
            yield con
