-- description: The idle runs of every EMR cluster over a trailing window (14 days by default): each run
--   of consecutive 5-minute samples with IsIdle = 1 (stg_cluster_metrics_5m), broken by a busy sample or
--   by a missing slot. run_start is the first idle slot, run_end the end of the last (+5 minutes);
--   idle_minutes counts the run's samples. A run that began before the window starts at the window's
--   first sample and one still going ends at its last (both shorter than they are: the cluster
--   optimiser's auto-termination saving is never overstated by them). days_seen is the number of days
--   of the window with IsIdle samples of the cluster. The cluster optimiser reads it because idle time
--   that moves from week to week leaves no hour of the week idle in cluster_activity_profile.
-- grain: one row per (account_id, date, resource_id, run_start)
-- partitioned_by: account_date
-- window_days: 14
-- window_over: stg_cluster_metrics_5m
-- expect_rows_from: none
-- group: features
WITH samples AS (
    SELECT resource_id, ts, emr_is_idle >= 0.5 AS idle
    FROM {{ ref('stg_cluster_metrics_5m') }}
    WHERE resource_kind = 'emr_cluster' AND emr_is_idle IS NOT NULL
),
days AS (
    SELECT resource_id, count(DISTINCT CAST(ts AS DATE)) AS days_seen FROM samples GROUP BY resource_id
),
marked AS (
    SELECT
        resource_id,
        ts,
        idle,
        CASE
            WHEN idle AND (
                coalesce(lag(idle) OVER w, false) = false
                OR ts - lag(ts) OVER w > INTERVAL 5 MINUTE
            ) THEN 1
            ELSE 0
        END AS starts_run
    FROM samples
    WINDOW w AS (PARTITION BY resource_id ORDER BY ts)
),
numbered AS (
    SELECT
        resource_id,
        ts,
        sum(starts_run) OVER (PARTITION BY resource_id ORDER BY ts ROWS UNBOUNDED PRECEDING) AS run
    FROM marked
    WHERE idle
)
SELECT
    {{ var('account_id') }} AS account_id,
    CAST({{ var('date') }} AS DATE) AS date,
    n.resource_id,
    min(n.ts) AS run_start,
    max(n.ts) + INTERVAL 5 MINUTE AS run_end,
    CAST(5 * count(*) AS INTEGER) AS idle_minutes,
    CAST(any_value(d.days_seen) AS INTEGER) AS days_seen,
    CAST({{ var('window_days') }} AS INTEGER) AS window_days
FROM numbered AS n
JOIN days AS d USING (resource_id)
GROUP BY n.resource_id, n.run
ORDER BY n.resource_id, run_start
