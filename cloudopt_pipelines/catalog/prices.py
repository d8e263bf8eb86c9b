"""The price catalogue: instance specs, on-demand and spot prices per region, reserved rates.

Built from the public files embedded in ``catalog/data`` (see its README for sources and licences):

- specs and region offerings: moto's copy of real DescribeInstanceTypes/DescribeInstanceTypeOfferings;
- on-demand: the 2026-07 AWS Price List numbers (Linux, shared tenancy) for us-east-1 and the
  GovCloud regions, read as they are;
- other regions: the 2026 us-east-1 price times that type's 2017 region/us-east-1 ratio, or the
  region's median ratio when the type did not exist in 2017: flagged ``ondemand_is_estimate``;
- spot: on-demand x (1 - Spot Advisor savings %), always an estimate (``spot_is_estimate``);
  ``is_estimate`` speaks of the on-demand price, the one every saving is measured against;
- reserved: the 2017 multi-region reserved table (the only one public here), as read.
"""

from __future__ import annotations

from datetime import date
from importlib import resources
from pathlib import Path

import duckdb
import pyarrow as pa

from cloudopt_pipelines.storage.schemas import PRICE_CATALOG, RESERVED_PRICES, conform

EMBEDDED = Path(str(resources.files("cloudopt_pipelines.catalog") / "data"))
HOURS_PER_MONTH = 730.0

_PRICE_LIST_AS_OF = date(2026, 7, 20)
_TABLE_2017_AS_OF = date(2017, 11, 12)
_SPOT_ADVISOR_AS_OF = date(2024, 2, 1)
# Prices in these regions are published in another currency; the catalogue is in USD only.
_NON_USD_REGIONS = ("cn-north-1", "cn-northwest-1")


def _connect(data_dir: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for name in ("moto_instance_types", "moto_offerings", "ondemand_2026", "spot_advisor", "prices_2017"):
        path = data_dir / f"{name}.parquet"
        if not path.exists():
            raise FileNotFoundError(
                f"price source '{name}' missing at {path}; reinstall the package or rebuild it with "
                "scripts/build_embedded_data.py"
            )
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}')")
    return con


def build_price_catalog(data_dir: Path = EMBEDDED) -> pa.Table:
    """One row per (region, instance type) offered, with on-demand and spot prices in USD/hour."""
    con = _connect(data_dir)
    non_usd = ", ".join(f"'{r}'" for r in _NON_USD_REGIONS)
    table = con.sql(
        f"""
        WITH specs AS (
            SELECT instance_type, family,
                   CAST(vcpu AS INTEGER) AS vcpu,
                   CAST(memory_mib AS DOUBLE) / 1024 AS memory_gib,
                   CASE WHEN architectures LIKE '%arm64%' THEN 'arm64' ELSE 'x86_64' END AS architecture,
                   CASE WHEN lower(current_generation) = 'true' THEN 'current' ELSE 'previous' END AS generation,
                   lower(burstable) = 'true' AS burstable,
                   network_performance,
                   CAST(gpu_count AS INTEGER) AS gpu_count
            FROM moto_instance_types
        ),
        od AS (
            SELECT region, instance_type, CAST(ondemand_price_per_hour AS DOUBLE) AS usd
            FROM ondemand_2026
            WHERE currency = 'USD' AND region NOT IN ({non_usd})
        ),
        old AS (
            SELECT region, instance_type, CAST(usd_per_hour AS DOUBLE) AS usd
            FROM prices_2017 WHERE pricing_model = 'ondemand'
        ),
        type_ratio AS (
            SELECT o.region, o.instance_type, o.usd / base.usd AS ratio
            FROM old o JOIN old base ON base.instance_type = o.instance_type AND base.region = 'us-east-1'
            WHERE base.usd > 0 AND o.usd > 0
        ),
        region_ratio AS (
            SELECT region, median(ratio) AS ratio FROM type_ratio GROUP BY region
        ),
        offered AS (
            SELECT DISTINCT region, instance_type FROM moto_offerings
            WHERE region NOT IN ({non_usd})
            UNION
            SELECT region, instance_type FROM od
        ),
        priced AS (
            SELECT f.region, f.instance_type,
                   coalesce(od.usd, base.usd * coalesce(tr.ratio, rr.ratio)) AS ondemand,
                   od.usd IS NULL AS od_estimate,
                   CASE WHEN od.usd IS NOT NULL THEN 'aws-price-list-2026-07'
                        WHEN tr.ratio IS NOT NULL THEN 'derived:2026-us-east-1 x 2017 type region ratio'
                        ELSE 'derived:2026-us-east-1 x 2017 region median ratio' END AS source
            FROM offered f
            LEFT JOIN od ON od.region = f.region AND od.instance_type = f.instance_type
            LEFT JOIN od base ON base.region = 'us-east-1' AND base.instance_type = f.instance_type
            LEFT JOIN type_ratio tr ON tr.region = f.region AND tr.instance_type = f.instance_type
            LEFT JOIN region_ratio rr ON rr.region = f.region
        ),
        spot AS (
            SELECT region, instance_type,
                   CAST(savings_vs_ondemand_pct AS DOUBLE) AS savings_pct,
                   interruption_frequency_label AS band
            FROM spot_advisor
        )
        SELECT p.region, p.instance_type, s.vcpu, s.memory_gib, s.architecture, s.family, s.generation,
               s.burstable, s.network_performance, s.gpu_count,
               round(p.ondemand, 6) AS ondemand_usd_per_hour,
               round(p.ondemand * (1 - sp.savings_pct / 100), 6) AS spot_usd_per_hour,
               sp.savings_pct AS spot_savings_pct,
               sp.band AS spot_interruption_band,
               p.source,
               DATE '{_PRICE_LIST_AS_OF}' AS as_of,
               p.od_estimate AS ondemand_is_estimate,
               sp.savings_pct IS NOT NULL AS spot_is_estimate,
               p.od_estimate AS is_estimate
        FROM priced p
        JOIN specs s ON s.instance_type = p.instance_type
        LEFT JOIN spot sp ON sp.region = p.region AND sp.instance_type = p.instance_type
        WHERE p.ondemand IS NOT NULL
        ORDER BY p.region, p.instance_type
        """
    ).to_arrow_table()
    return conform(_as_table(table), PRICE_CATALOG, "price_catalog")


def build_reserved_prices(data_dir: Path = EMBEDDED) -> pa.Table:
    """Reserved-instance effective hourly rates per region, type, term and payment (2017 table)."""
    con = _connect(data_dir)
    table = con.sql(
        f"""
        WITH r AS (
            SELECT region, instance_type,
                   regexp_extract(pricing_model, 'yrTerm(\\d)', 1) AS term,
                   regexp_extract(pricing_model, 'yrTerm\\d(\\w+)\\.', 1) AS offering,
                   regexp_extract(pricing_model, '\\.(\\w+)$', 1) AS payment,
                   CAST(usd_per_hour AS DOUBLE) AS usd
            FROM prices_2017 WHERE pricing_model LIKE 'reserved:%'
        ),
        od AS (
            SELECT region, instance_type, CAST(usd_per_hour AS DOUBLE) AS usd
            FROM prices_2017 WHERE pricing_model = 'ondemand'
        )
        SELECT r.region, r.instance_type, CAST(r.term AS INTEGER) AS term_years,
               lower(r.offering) AS offering_class,
               CASE r.payment WHEN 'allUpfront' THEN 'all_upfront' WHEN 'partialUpfront' THEN 'partial_upfront'
                    WHEN 'noUpfront' THEN 'no_upfront' ELSE r.payment END AS payment_option,
               r.usd AS effective_usd_per_hour,
               od.usd AS ondemand_usd_per_hour,
               round(100 * (1 - r.usd / od.usd), 3) AS discount_pct,
               'ec2instances.info-2017-11-12' AS source,
               DATE '{_TABLE_2017_AS_OF}' AS as_of,
               false AS is_estimate
        FROM r JOIN od USING (region, instance_type)
        WHERE r.usd IS NOT NULL AND od.usd > 0
        ORDER BY ALL
        """
    ).to_arrow_table()
    return conform(_as_table(table), RESERVED_PRICES, "reserved_prices")


class PriceCatalog:
    """Look-ups over a built catalogue, with errors that name the missing type and region."""

    def __init__(self, table: pa.Table) -> None:
        self._rows = {(row["region"], row["instance_type"]): row for row in table.to_pylist()}

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._rows

    def get(self, region: str, instance_type: str) -> dict:
        try:
            return self._rows[(region, instance_type)]
        except KeyError:
            raise KeyError(
                f"unknown instance type '{instance_type}' in region '{region}' (not in the price catalogue; "
                "check the type name, or refresh the catalogue by materialising the price_catalog asset)"
            ) from None

    def monthly_ondemand_usd(self, region: str, instance_type: str) -> float:
        return self.get(region, instance_type)["ondemand_usd_per_hour"] * HOURS_PER_MONTH

    def __len__(self) -> int:
        return len(self._rows)


def _as_table(result: pa.Table | pa.RecordBatchReader) -> pa.Table:
    return result if isinstance(result, pa.Table) else result.read_all()
