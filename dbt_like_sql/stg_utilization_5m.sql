-- description: Typed, deduplicated 5-minute utilisation samples per resource, with gaps marked.
--   One sample per resource and 5-minute slot: when a source reports the same slot twice, the
--   later-listed row of the raw partition wins and dup_count says how many there were. Values
--   outside 0-100 % are kept and flagged, never clipped.
-- grain: one row per (account_id, date, resource_id, ts)
-- partitioned_by: account_date
-- group: features
WITH raw AS (
    SELECT
        account_id,
        date,
        resource_id,
        time_bucket(INTERVAL 5 MINUTE, ts) AS ts,
        CAST(cpu_pct AS DOUBLE) AS cpu_pct,
        CAST(cpu_max_pct AS DOUBLE) AS cpu_max_pct,
        CAST(mem_pct AS DOUBLE) AS mem_pct,
        CAST(net_in_bytes AS DOUBLE) AS net_in_bytes,
        CAST(net_out_bytes AS DOUBLE) AS net_out_bytes,
        source,
        row_number() OVER () AS arrival
    FROM {{ ref('utilization_5m') }}
),
ranked AS (
    SELECT
        *,
        count(*) OVER (PARTITION BY resource_id, ts) AS dup_count,
        row_number() OVER (PARTITION BY resource_id, ts ORDER BY arrival DESC) AS keep_rank
    FROM raw
)
SELECT
    account_id,
    date,
    resource_id,
    ts,
    cpu_pct,
    coalesce(cpu_max_pct, cpu_pct) AS cpu_peak_pct,
    mem_pct,
    net_in_bytes,
    net_out_bytes,
    source,
    CAST(dup_count AS INTEGER) AS dup_count,
    (cpu_pct NOT BETWEEN 0 AND 100) OR (cpu_max_pct NOT BETWEEN 0 AND 100)
        OR (mem_pct NOT BETWEEN 0 AND 100) AS out_of_range,
    CAST(
        epoch(ts - lag(ts) OVER (PARTITION BY resource_id ORDER BY ts)) / 300 - 1 AS INTEGER
    ) AS missing_slots_before
FROM ranked
WHERE keep_rank = 1
ORDER BY resource_id, ts
