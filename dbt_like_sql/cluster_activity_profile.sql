-- description: Hour-of-week activity of every ECS cluster, ECS service and EMR cluster over a trailing
--   window (14 days by default), in UTC, from their own CloudWatch series (stg_cluster_metrics_5m):
--   the cluster optimiser's view of when capacity is used and when it idles. hour_of_week is 0-167,
--   (ISO weekday - 1) x 24 + hour, so 0 is Monday 00:00-00:59 UTC. cpu_* and mem_* are the
--   CPUUtilization / MemoryUtilization averages (percent of what is reserved: ECS reports use over
--   the tasks' reservation); yarn_mem_used_* is 100 - YARNMemoryAvailablePercentage; idle_share_pct is
--   the share of the bucket's samples with IsIdle = 1; apps_running_max and containers_pending_max
--   are EMR's AppsRunning and ContainerPending peaks; insights_share_pct is the share of the bucket's
--   samples whose CPU and memory come from Container Insights (stg_cluster_metrics_5m.from_insights).
--   Percentiles are exact (quantile_cont) over the bucket's 5-minute values; buckets without samples
--   are absent (never zero-filled). days_seen is the number of distinct days of the window with
--   samples of the resource.
-- grain: one row per (account_id, date, resource_id, hour_of_week)
-- partitioned_by: account_date
-- window_days: 14
-- window_over: stg_cluster_metrics_5m
-- expect_rows_from: stg_cluster_metrics_5m
-- group: features
WITH samples AS (
    SELECT
        resource_id,
        resource_kind,
        ts,
        CAST(ts AS DATE) AS day,
        (isodow(timezone('UTC', ts)) - 1) * 24 + hour(timezone('UTC', ts)) AS hour_of_week,
        cpu_pct,
        mem_pct,
        from_insights,
        cpu_reserved_pct,
        mem_reserved_pct,
        yarn_mem_used_pct,
        emr_is_idle,
        emr_apps_running,
        emr_containers_pending
    FROM {{ ref('stg_cluster_metrics_5m') }}
    WHERE resource_kind IN ('ecs_cluster', 'ecs_service', 'emr_cluster')
),
days AS (
    SELECT resource_id, count(DISTINCT day) AS days_seen FROM samples GROUP BY resource_id
),
buckets AS (
    SELECT
        resource_id,
        any_value(resource_kind) AS resource_kind,
        hour_of_week,
        count(*) AS samples,
        avg(cpu_pct) AS cpu_mean_pct,
        quantile_cont(cpu_pct, 0.95) AS cpu_p95_pct,
        max(cpu_pct) AS cpu_max_pct,
        avg(mem_pct) AS mem_mean_pct,
        quantile_cont(mem_pct, 0.95) AS mem_p95_pct,
        max(mem_pct) AS mem_max_pct,
        avg(cpu_reserved_pct) AS cpu_reserved_mean_pct,
        avg(mem_reserved_pct) AS mem_reserved_mean_pct,
        avg(yarn_mem_used_pct) AS yarn_mem_used_mean_pct,
        quantile_cont(yarn_mem_used_pct, 0.95) AS yarn_mem_used_p95_pct,
        max(yarn_mem_used_pct) AS yarn_mem_used_max_pct,
        100.0 * avg(CASE WHEN emr_is_idle IS NULL THEN NULL WHEN emr_is_idle >= 0.5 THEN 1.0 ELSE 0.0 END)
            AS idle_share_pct,
        max(emr_apps_running) AS apps_running_max,
        max(emr_containers_pending) AS containers_pending_max,
        100.0 * avg(CASE WHEN from_insights THEN 1.0 ELSE 0.0 END) AS insights_share_pct
    FROM samples
    GROUP BY resource_id, hour_of_week
)
SELECT
    {{ var('account_id') }} AS account_id,
    CAST({{ var('date') }} AS DATE) AS date,
    b.resource_id,
    b.resource_kind,
    CAST(b.hour_of_week AS INTEGER) AS hour_of_week,
    CAST({{ var('window_days') }} AS INTEGER) AS window_days,
    CAST(d.days_seen AS INTEGER) AS days_seen,
    CAST(b.samples AS INTEGER) AS samples,
    round(100.0 * b.samples / (12 * ceil({{ var('window_days') }} / 7.0)), 3) AS coverage_pct,
    b.cpu_mean_pct,
    b.cpu_p95_pct,
    b.cpu_max_pct,
    b.mem_mean_pct,
    b.mem_p95_pct,
    b.mem_max_pct,
    b.cpu_reserved_mean_pct,
    b.mem_reserved_mean_pct,
    b.yarn_mem_used_mean_pct,
    b.yarn_mem_used_p95_pct,
    b.yarn_mem_used_max_pct,
    b.idle_share_pct,
    b.apps_running_max,
    b.containers_pending_max,
    b.insights_share_pct
FROM buckets AS b
JOIN days AS d USING (resource_id)
ORDER BY b.resource_id, b.hour_of_week
