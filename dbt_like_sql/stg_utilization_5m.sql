-- description: Typed, deduplicated 5-minute utilisation samples per EC2 instance (Kubernetes, ECS
--   and EMR nodes included: they are EC2 instances), with gaps marked. One sample per resource and
--   5-minute slot: when a source reports the same slot twice, the later-listed row of the raw
--   partition wins and dup_count says how many there were. Samples whose slot falls outside the
--   partition's UTC day are dropped (another day's partition owns them). Values outside 0-100 % (and
--   negative byte counts) are kept and flagged, never clipped; a missing value stays NULL (never 0). A NaN or infinite value
--   (a broken source: no real utilisation is either) is excluded: NULL here, and nonfinite says
--   the sample had one, so that no statistic downstream is NaN or infinite. missing_slots_before
--   counts the empty 5-minute slots between this sample and the previous one of the resource (or
--   the start of the day, for the first); missing_slots_after, on the last sample of the day, the
--   empty slots up to midnight.
-- grain: one row per (account_id, date, resource_id, ts)
-- partitioned_by: account_date
-- group: features
-- file_row_number: utilization_5m
WITH
-- How it runs without window functions (the lag/lead version took about 3x the CPU time):
-- 1. resources: one hash aggregate per instance over (resource_id, slot) only: a 288-bit map of the
--    slots present (five 64-bit words), the last slot, and per word the last slot before it.
--    More rows than slots present means a duplicate slot.
-- 2. samples: instances without a duplicate pass through as they are; only those with one go
--    through the GROUP BY (resource_id, slot) that keeps the later-listed row (file_row_number).
-- 3. missing_slots_before from the map: the previous present slot is the highest set bit below the
--    slot in its word (floor(log2) of a value below 2^32, exact in a DOUBLE), else the last slot
--    before the word.
day AS (
    SELECT epoch_us(CAST(CAST({{ var('date') }} AS DATE) AS TIMESTAMP)) AS day_us
),
raw AS NOT MATERIALIZED (
    SELECT
        u.*,
        CAST((epoch_us(u.ts) - day.day_us) // 300000000 AS INTEGER) AS slot
    FROM {{ ref('utilization_5m') }} AS u, day
    WHERE epoch_us(u.ts) >= day.day_us AND epoch_us(u.ts) < day.day_us + 86400000000
),
resources AS (
    SELECT
        resource_id,
        row_number() OVER (ORDER BY resource_id) AS rank,
        n > bit_count(w0) + bit_count(w1) + bit_count(w2) + bit_count(w3) + bit_count(w4) AS has_dups,
        last_slot, w0, w1, w2, w3, w4, p1, p2, p3, p4
    FROM (
        SELECT
            resource_id,
            count(*) AS n,
            max(slot) AS last_slot,
            coalesce(bit_or(bit) FILTER (WHERE word = 0), 0) AS w0,
            coalesce(bit_or(bit) FILTER (WHERE word = 1), 0) AS w1,
            coalesce(bit_or(bit) FILTER (WHERE word = 2), 0) AS w2,
            coalesce(bit_or(bit) FILTER (WHERE word = 3), 0) AS w3,
            coalesce(bit_or(bit) FILTER (WHERE word = 4), 0) AS w4,
            coalesce(max(slot) FILTER (WHERE word < 1), -1) AS p1,
            coalesce(max(slot) FILTER (WHERE word < 2), -1) AS p2,
            coalesce(max(slot) FILTER (WHERE word < 3), -1) AS p3,
            coalesce(max(slot) FILTER (WHERE word < 4), -1) AS p4
        FROM (
            SELECT resource_id, slot, slot // 64 AS word, CAST(1 AS UBIGINT) << CAST(slot % 64 AS UBIGINT) AS bit
            FROM raw
        )
        GROUP BY resource_id
    )
),
tagged AS NOT MATERIALIZED (
    SELECT
        raw.*, r.rank, r.has_dups, r.last_slot,
        CASE raw.slot // 64 WHEN 0 THEN -1 WHEN 1 THEN r.p1 WHEN 2 THEN r.p2 WHEN 3 THEN r.p3 ELSE r.p4 END
            AS prev_word_slot,
        (CASE raw.slot // 64 WHEN 0 THEN r.w0 WHEN 1 THEN r.w1 WHEN 2 THEN r.w2 WHEN 3 THEN r.w3 ELSE r.w4 END)
            & ((CAST(1 AS UBIGINT) << CAST(raw.slot % 64 AS UBIGINT)) - 1) AS below
    FROM raw JOIN resources AS r USING (resource_id)
),
deduped AS (
    SELECT
        account_id, date, resource_id, slot, rank, last_slot, prev_word_slot, below, cpu_pct, cpu_max_pct,
        mem_pct, net_in_bytes, net_out_bytes, source, 1 AS dup_count
    FROM tagged
    WHERE NOT has_dups
    UNION ALL
    SELECT
        any_value(account_id), any_value(date), resource_id, slot, any_value(rank), any_value(last_slot),
        any_value(prev_word_slot), any_value(below),
        arg_max_null(cpu_pct, file_row_number), arg_max_null(cpu_max_pct, file_row_number),
        arg_max_null(mem_pct, file_row_number), arg_max_null(net_in_bytes, file_row_number),
        arg_max_null(net_out_bytes, file_row_number), arg_max_null(source, file_row_number), count(*)
    FROM tagged
    WHERE has_dups
    GROUP BY resource_id, slot
),
samples AS (
    -- NaN and +-Inf out: isfinite() is NULL for NULL, false for NaN and infinities.
    SELECT
        * REPLACE (
            CASE WHEN isfinite(cpu_pct) THEN cpu_pct END AS cpu_pct,
            CASE WHEN isfinite(cpu_max_pct) THEN cpu_max_pct END AS cpu_max_pct,
            CASE WHEN isfinite(mem_pct) THEN mem_pct END AS mem_pct,
            CASE WHEN isfinite(net_in_bytes) THEN net_in_bytes END AS net_in_bytes,
            CASE WHEN isfinite(net_out_bytes) THEN net_out_bytes END AS net_out_bytes
        ),
        NOT (coalesce(isfinite(cpu_pct), true) AND coalesce(isfinite(cpu_max_pct), true)
            AND coalesce(isfinite(mem_pct), true) AND coalesce(isfinite(net_in_bytes), true)
            AND coalesce(isfinite(net_out_bytes), true)) AS nonfinite
    FROM deduped
)
SELECT
    account_id,
    date,
    resource_id,
    make_timestamptz((SELECT day_us FROM day) + CAST(slot AS BIGINT) * 300000000) AS ts,
    CAST(cpu_pct AS DOUBLE) AS cpu_pct,
    CAST(coalesce(cpu_max_pct, cpu_pct) AS DOUBLE) AS cpu_peak_pct,
    cpu_max_pct IS NOT NULL AS cpu_peak_is_maximum,
    CAST(mem_pct AS DOUBLE) AS mem_pct,
    CAST(net_in_bytes AS DOUBLE) AS net_in_bytes,
    CAST(net_out_bytes AS DOUBLE) AS net_out_bytes,
    source,
    CAST(dup_count AS INTEGER) AS dup_count,
    coalesce((cpu_pct NOT BETWEEN 0 AND 100) OR (cpu_max_pct NOT BETWEEN 0 AND 100)
        OR (mem_pct NOT BETWEEN 0 AND 100) OR net_in_bytes < 0 OR net_out_bytes < 0, false) AS out_of_range,
    nonfinite,
    CAST(slot - 1 - CASE  -- slot - previous present slot - 1
        WHEN below = 0 THEN prev_word_slot
        WHEN below >> 32 = 0 THEN slot // 64 * 64 + CAST(floor(log2(CAST(below AS DOUBLE))) AS INTEGER)
        ELSE slot // 64 * 64 + 32 + CAST(floor(log2(CAST(below >> 32 AS DOUBLE))) AS INTEGER)
    END AS INTEGER) AS missing_slots_before,
    CAST(CASE WHEN slot = last_slot THEN 287 - slot ELSE 0 END AS INTEGER) AS missing_slots_after
FROM samples
-- Two integer keys sort faster than their one combined key rank * 288 + slot (5-8 % of the statement's CPU).
ORDER BY rank, slot
