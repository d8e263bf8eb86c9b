-- description: Hour-of-week activity per EC2 instance over a trailing window (14 days by default),
--   in the resource's own time zone, for off-hours (scheduling) detection. The zone is the first of
--   the tags tz, timezone and TimeZone that is a valid IANA name (e.g. America/New_York), else UTC;
--   tz_source says which (tag key, 'invalid_tag' for a tag that is not an IANA zone, or 'default').
--   hour_of_week is 0-167 in local time: (ISO weekday - 1) x 24 + hour, so 0 is Monday 00:00-00:59.
--   Daylight-saving changes are handled by the zone rules (each sample is converted on its own).
--   A sample is active when its 5-minute CPU peak is at least 5 %. expected_samples counts the
--   5-minute slots of the window that fall in the bucket; coverage_pct is samples over that.
--   Buckets with no samples are absent (never zero-filled). cpu_p95_pct is the exact 95th percentile
--   of the bucket's 5-minute CPU peaks (quantile_cont): the off-hours schedule's idle test.
-- grain: one row per (account_id, date, resource_id, hour_of_week)
-- partitioned_by: account_date
-- window_days: 14
-- window_over: stg_utilization_5m
-- expect_rows_from: stg_utilization_5m
-- group: features
WITH tags AS (
    SELECT
        resource_id,
        json_extract_string(tags, '$.tz') AS tag_tz,
        json_extract_string(tags, '$.timezone') AS tag_timezone,
        json_extract_string(tags, '$.TimeZone') AS tag_tz_camel
    FROM {{ ref('resources') }}
    WHERE resource_kind = 'ec2_instance'
),
zones AS (SELECT name FROM pg_timezone_names()),
resolved AS (
    SELECT
        t.resource_id,
        CASE
            WHEN z1.name IS NOT NULL THEN z1.name
            WHEN z2.name IS NOT NULL THEN z2.name
            WHEN z3.name IS NOT NULL THEN z3.name
            ELSE 'UTC'
        END AS timezone,
        CASE
            WHEN z1.name IS NOT NULL THEN 'tag:tz'
            WHEN z2.name IS NOT NULL THEN 'tag:timezone'
            WHEN z3.name IS NOT NULL THEN 'tag:TimeZone'
            WHEN coalesce(t.tag_tz, t.tag_timezone, t.tag_tz_camel) IS NOT NULL THEN 'invalid_tag'
            ELSE 'default'
        END AS tz_source
    FROM tags AS t
    LEFT JOIN zones AS z1 ON z1.name = t.tag_tz
    LEFT JOIN zones AS z2 ON z2.name = t.tag_timezone
    LEFT JOIN zones AS z3 ON z3.name = t.tag_tz_camel
),
samples AS (
    SELECT
        s.resource_id,
        coalesce(r.timezone, 'UTC') AS timezone,
        coalesce(r.tz_source, 'default') AS tz_source,
        timezone(coalesce(r.timezone, 'UTC'), s.ts) AS local_ts,
        s.cpu_pct,
        s.cpu_peak_pct
    FROM {{ ref('stg_utilization_5m') }} AS s
    LEFT JOIN resolved AS r USING (resource_id)
),
slots AS (
    -- Every 5-minute slot of the window, per zone in use, to count the expected samples per bucket.
    SELECT z.timezone, (isodow(timezone(z.timezone, g.ts)) - 1) * 24 + hour(timezone(z.timezone, g.ts)) AS hour_of_week,
           count(*) AS expected_samples
    FROM (SELECT DISTINCT timezone FROM samples) AS z
    CROSS JOIN generate_series(
        CAST(CAST({{ var('window_start') }} AS DATE) AS TIMESTAMPTZ),
        CAST(CAST({{ var('date') }} AS DATE) AS TIMESTAMPTZ) + INTERVAL 1 DAY - INTERVAL 5 MINUTE,
        INTERVAL 5 MINUTE
    ) AS g(ts)
    GROUP BY ALL
),
buckets AS (
    SELECT
        resource_id,
        any_value(timezone) AS timezone,
        any_value(tz_source) AS tz_source,
        (isodow(local_ts) - 1) * 24 + hour(local_ts) AS hour_of_week,
        count(*) AS samples,
        avg(cpu_pct) AS cpu_mean_pct,
        max(cpu_peak_pct) AS cpu_max_pct,
        count(*) FILTER (WHERE cpu_peak_pct >= 5) AS active_samples,
        quantile_cont(cpu_peak_pct, 0.95) AS cpu_p95_pct
    FROM samples
    GROUP BY resource_id, hour_of_week
)
SELECT
    {{ var('account_id') }} AS account_id,
    CAST({{ var('date') }} AS DATE) AS date,
    b.resource_id,
    CAST(b.hour_of_week AS INTEGER) AS hour_of_week,
    CAST(b.hour_of_week // 24 AS INTEGER) AS local_weekday,
    CAST(b.hour_of_week % 24 AS INTEGER) AS local_hour,
    b.timezone,
    b.tz_source,
    CAST({{ var('window_days') }} AS INTEGER) AS window_days,
    CAST(b.samples AS INTEGER) AS samples,
    CAST(sl.expected_samples AS INTEGER) AS expected_samples,
    round(100.0 * b.samples / sl.expected_samples, 3) AS coverage_pct,
    b.cpu_mean_pct,
    b.cpu_max_pct,
    CAST(b.active_samples AS INTEGER) AS active_samples,
    round(100.0 * b.active_samples / b.samples, 3) AS active_share_pct,
    b.cpu_p95_pct
FROM buckets AS b
JOIN slots AS sl ON sl.timezone = b.timezone AND sl.hour_of_week = b.hour_of_week
ORDER BY b.resource_id, b.hour_of_week
