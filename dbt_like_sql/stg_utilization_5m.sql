-- description: Typed, deduplicated 5-minute utilisation samples per EC2 instance (Kubernetes, ECS
--   and EMR nodes included: they are EC2 instances), with gaps marked. One sample per resource and
--   5-minute slot: when a source reports the same slot twice, the later-listed row of the raw
--   partition wins and dup_count says how many there were. Samples whose slot falls outside the
--   partition's UTC day are dropped (another day's partition owns them). Values outside 0-100 % are
--   kept and flagged, never clipped; a missing value stays NULL (never 0). missing_slots_before
--   counts the empty 5-minute slots between this sample and the previous one of the resource (or
--   the start of the day, for the first); missing_slots_after, on the last sample of the day, the
--   empty slots up to midnight.
-- grain: one row per (account_id, date, resource_id, ts)
-- partitioned_by: account_date
-- group: features
WITH day AS (
    -- Integer microseconds throughout: time_bucket and casts on TIMESTAMPTZ go through ICU, 10x slower.
    SELECT epoch_us(CAST(CAST({{ var('date') }} AS DATE) AS TIMESTAMP)) AS day_us
),
raw AS (
    SELECT
        *,
        epoch_us(ts) // 300000000 * 300000000 AS slot_us,
        row_number() OVER () AS arrival
    FROM {{ ref('utilization_5m') }}
),
dedup AS (
    -- One row per slot: the later-listed raw row's values (NULLs included) win.
    SELECT
        resource_id,
        slot_us,
        any_value(account_id) AS account_id,
        any_value(date) AS date,
        CAST(arg_max_null(cpu_pct, arrival) AS DOUBLE) AS cpu_pct,
        CAST(arg_max_null(cpu_max_pct, arrival) AS DOUBLE) AS cpu_max_pct,
        CAST(arg_max_null(mem_pct, arrival) AS DOUBLE) AS mem_pct,
        CAST(arg_max_null(net_in_bytes, arrival) AS DOUBLE) AS net_in_bytes,
        CAST(arg_max_null(net_out_bytes, arrival) AS DOUBLE) AS net_out_bytes,
        arg_max_null(source, arrival) AS source,
        count(*) AS dup_count
    FROM raw, day
    WHERE slot_us >= day.day_us AND slot_us < day.day_us + 86400000000
    GROUP BY resource_id, slot_us
)
SELECT
    account_id,
    date,
    resource_id,
    make_timestamptz(slot_us) AS ts,
    cpu_pct,
    coalesce(cpu_max_pct, cpu_pct) AS cpu_peak_pct,
    cpu_max_pct IS NOT NULL AS cpu_peak_is_maximum,
    mem_pct,
    net_in_bytes,
    net_out_bytes,
    source,
    CAST(dup_count AS INTEGER) AS dup_count,
    coalesce((cpu_pct NOT BETWEEN 0 AND 100) OR (cpu_max_pct NOT BETWEEN 0 AND 100)
        OR (mem_pct NOT BETWEEN 0 AND 100), false) AS out_of_range,
    CAST((slot_us - lag(slot_us, 1, day.day_us - 300000000) OVER w) // 300000000 - 1 AS INTEGER)
        AS missing_slots_before,
    CAST(CASE WHEN lead(slot_us) OVER w IS NULL THEN (day.day_us + 86400000000 - slot_us) // 300000000 - 1
              ELSE 0 END AS INTEGER) AS missing_slots_after
FROM dedup, day
WINDOW w AS (PARTITION BY resource_id ORDER BY slot_us)
ORDER BY resource_id, slot_us
