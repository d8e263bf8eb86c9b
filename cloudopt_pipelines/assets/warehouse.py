"""Warehouse stage: the DuckDB file analysts query."""

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError

from cloudopt_pipelines.resources.storage import LakeResource, WarehouseResource
from cloudopt_pipelines.storage.warehouse import WriterWaitStopped

WAREHOUSE_POOL = "duckdb_warehouse"
STOPPING = frozenset({dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE})


def _run_is_stopping(context: dg.AssetExecutionContext) -> bool:
    """True once the run was asked to terminate (or was failed from outside), as the instance records it.

    Dagster's termination interrupts the step with a signal, but an interrupt that lands while the run
    worker has interrupts captured can be dropped; the instance's record of the request is never lost.
    """
    try:
        run = context.instance.get_run_by_id(context.run_id)
    except Exception:  # the instance's database briefly away: keep waiting, the lock's timeout still bounds it
        return False
    return run is not None and run.status in STOPPING  # no run record (a direct invocation): never stopped


def build_warehouse_asset(upstream: list[dg.AssetKey]) -> dg.AssetsDefinition:
    """The warehouse asset, downstream of every lake table."""

    @dg.asset(
        key=["warehouse", "duckdb_warehouse"],
        deps=upstream,
        group_name="warehouse",
        kinds={"duckdb"},
        pool=WAREHOUSE_POOL,
    )
    def duckdb_warehouse(
        context: dg.AssetExecutionContext, lake: LakeResource, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        """Views over every lake table plus the marts, rebuilt into a new file that atomically replaces
        the old one, so analysts with the warehouse open read-only are never blocked. A bad lake entry
        (a file whose SHA-256 no longer matches the one recorded when it was written, an unreadable file,
        a folder that is not a table) is left out and listed in `warnings`; `files_hashed` counts the files
        this rebuild hashed, `files_verified_from_cache` those verified before and unchanged since. While
        another writer holds the warehouse's lock the step waits (up to 300 s), and a request to terminate
        the run ends the wait at once with nothing written."""
        try:
            build = warehouse.rebuild(lake.get_lake(), should_stop=lambda: _run_is_stopping(context))
        except WriterWaitStopped as stopped:
            context.log.warning(str(stopped))
            raise DagsterExecutionInterruptedError(str(stopped)) from None
        for warning in build.warnings:
            context.log.warning(warning)
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(build.path)),
                "view_count": len(build.views),
                "views": dg.MetadataValue.text(", ".join(build.views) or "none"),
                "empty_views": dg.MetadataValue.text(", ".join(build.empty_views) or "none"),
                "marts": dg.MetadataValue.text(", ".join(build.marts) or "none"),
                "warnings": dg.MetadataValue.json(build.warnings),
                "left_out_files": dg.MetadataValue.json(build.left_out),
                "files_hashed": build.files_hashed,
                "files_verified_from_cache": build.files_from_cache,
                "files_without_digest": build.files_without_digest,
            }
        )

    return duckdb_warehouse
