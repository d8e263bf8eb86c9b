"""The price catalogue: prices read as published, derived ones flagged, clear errors for unknown types."""

import duckdb
import pytest

from cloudopt_pipelines.catalog.prices import EMBEDDED, PriceCatalog, build_price_catalog, build_reserved_prices
from cloudopt_pipelines.storage.schemas import PRICE_CATALOG, RESERVED_PRICES


@pytest.fixture(scope="module")
def catalog():
    return build_price_catalog()


def test_schema_and_one_row_per_region_and_type(catalog) -> None:
    assert catalog.schema == PRICE_CATALOG
    con = duckdb.connect()
    con.register("c", catalog)
    dupes = con.execute("SELECT count(*) FROM (SELECT region, instance_type FROM c GROUP BY ALL HAVING count(*) > 1)")
    assert dupes.fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM c WHERE ondemand_usd_per_hour <= 0").fetchone()[0] == 0


def test_us_east_1_prices_are_read_not_derived(catalog) -> None:
    con = duckdb.connect()
    con.register("c", catalog)
    source = con.execute(
        f"SELECT CAST(ondemand_price_per_hour AS DOUBLE) FROM read_parquet('{EMBEDDED / 'ondemand_2026.parquet'}') "
        "WHERE region = 'us-east-1' AND instance_type = 'm5.2xlarge'"
    ).fetchone()[0]
    row = con.execute(
        "SELECT ondemand_usd_per_hour, is_estimate, vcpu, memory_gib, architecture FROM c "
        "WHERE region = 'us-east-1' AND instance_type = 'm5.2xlarge'"
    ).fetchone()
    assert row == (pytest.approx(source), False, 8, 32.0, "x86_64")
    assert con.execute("SELECT count(*) FROM c WHERE region = 'us-east-1' AND is_estimate").fetchone()[0] == 0


def test_other_regions_are_estimates_scaled_by_2017_ratio(catalog) -> None:
    con = duckdb.connect()
    con.register("c", catalog)
    old = {
        region: usd
        for region, usd in con.execute(
            f"SELECT region, CAST(usd_per_hour AS DOUBLE) FROM read_parquet('{EMBEDDED / 'prices_2017.parquet'}') "
            "WHERE instance_type = 'm4.xlarge' AND pricing_model = 'ondemand' AND region IN ('us-east-1', 'eu-west-1')"
        ).fetchall()
    }
    east, west = (
        con.execute(
            "SELECT ondemand_usd_per_hour, is_estimate, source FROM c "
            f"WHERE instance_type = 'm4.xlarge' AND region = '{r}'"
        ).fetchone()
        for r in ("us-east-1", "eu-west-1")
    )
    assert west[1] is True and "ratio" in west[2]
    assert west[0] == pytest.approx(east[0] * old["eu-west-1"] / old["us-east-1"], rel=1e-5)
    graviton = con.execute("SELECT architecture FROM c WHERE instance_type = 'm7g.large' LIMIT 1").fetchone()[0]
    assert graviton == "arm64"


def test_spot_price_follows_spot_advisor_savings(catalog) -> None:
    rows = [r for r in catalog.to_pylist() if r["spot_savings_pct"] is not None]
    assert len(rows) > 1000
    for row in rows[:500]:
        expected = row["ondemand_usd_per_hour"] * (1 - row["spot_savings_pct"] / 100)
        assert row["spot_usd_per_hour"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
        assert row["spot_is_estimate"] is True
        assert row["spot_interruption_band"] in {"<5%", "5-10%", "10-15%", "15-20%", ">20%"}


def test_no_non_usd_region(catalog) -> None:
    assert not {r for r in catalog.column("region").to_pylist() if r.startswith("cn-")}


def test_reserved_rates_are_discounts_on_the_same_table() -> None:
    reserved = build_reserved_prices()
    assert reserved.schema == RESERVED_PRICES
    rows = [r for r in reserved.to_pylist() if r["region"] == "us-east-1" and r["instance_type"] == "m4.xlarge"]
    assert {(r["term_years"], r["payment_option"]) for r in rows} >= {(1, "no_upfront"), (3, "all_upfront")}
    for row in rows:
        assert 0 < row["effective_usd_per_hour"] < row["ondemand_usd_per_hour"]
        assert row["discount_pct"] == pytest.approx(
            100 * (1 - row["effective_usd_per_hour"] / row["ondemand_usd_per_hour"]), abs=1e-3
        )


def test_unknown_type_error_names_type_region_and_fix(catalog) -> None:
    prices = PriceCatalog(catalog)
    assert prices.monthly_ondemand_usd("us-east-1", "m5.large") == pytest.approx(0.096 * 730)
    with pytest.raises(KeyError, match=r"unknown instance type 'm9.huge' in region 'us-east-1'.*price_catalog"):
        prices.get("us-east-1", "m9.huge")
