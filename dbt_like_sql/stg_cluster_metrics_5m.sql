-- description: Typed, deduplicated 5-minute samples of ECS clusters and services, EMR clusters and
--   Kubernetes pods (CloudWatch Container Insights), pivoted from the long cluster_metrics_5m table
--   (one row per resource, slot, namespace, metric and statistic) to one row per resource and slot.
--   resource_kind is ecs_cluster, ecs_service, emr_cluster or container. Percentages are as
--   CloudWatch reports them (ECS CPUUtilization can exceed 100 %: kept, flagged out_of_range);
--   For ECS services, Container Insights (ECS/ContainerInsights) is preferred where present: cpu_pct is
--   100 x CpuUtilized / CpuReserved and mem_pct 100 x MemoryUtilized / MemoryReserved (the same "use over
--   what the tasks reserve" as AWS/ECS CPUUtilization, measured per task), from_insights says so; AWS/ECS
--   CPUUtilization / MemoryUtilization otherwise (and always for clusters, whose AWS/ECS use is over
--   the registered capacity, not the reservation). yarn_mem_used_pct is 100 - YARNMemoryAvailablePercentage; cpu_cores and mem_bytes are a pod's
--   absolute use (pod_cpu_usage_total / 1000, pod_memory_working_set). Duplicates: the later-listed
--   raw row of a (resource, slot, metric, statistic) wins. Missing metrics are NULL, never 0; NaN and
--   infinite values are excluded (NULL) and flagged nonfinite. When
--   the collector does not write cluster_metrics_5m for a partition (a table that does not exist
--   yet, or an account without clusters) this model writes an empty partition, so that models
--   reading it still run.
-- grain: one row per (account_id, date, resource_id, ts)
-- partitioned_by: account_date
-- optional_sources: cluster_metrics_5m
-- group: features
WITH raw AS (
    SELECT
        account_id,
        date,
        resource_id,
        time_bucket(INTERVAL 5 MINUTE, ts) AS ts,
        namespace,
        metric,
        stat,
        -- NaN and +-Inf out (NULL), flagged: isfinite() is false for them, NULL for NULL.
        CASE WHEN isfinite(CAST(value AS DOUBLE)) THEN CAST(value AS DOUBLE) END AS value,
        NOT coalesce(isfinite(CAST(value AS DOUBLE)), true) AS nonfinite,
        row_number() OVER () AS arrival
    FROM {{ ref('cluster_metrics_5m') }}
    WHERE CAST(time_bucket(INTERVAL 5 MINUTE, ts) AS DATE) = CAST({{ var('date') }} AS DATE)
),
dedup AS (
    SELECT
        resource_id, ts, namespace, metric, stat,
        any_value(account_id) AS account_id,
        any_value(date) AS date,
        arg_max(value, arrival) AS value,
        arg_max(nonfinite, arrival) AS nonfinite,
        count(*) AS n
    FROM raw
    GROUP BY resource_id, ts, namespace, metric, stat
),
pivoted AS (
    SELECT
        any_value(account_id) AS account_id,
        any_value(date) AS date,
        resource_id,
        ts,
        CASE
            WHEN bool_or(namespace = 'ContainerInsights') THEN 'container'
            WHEN bool_or(namespace = 'AWS/ElasticMapReduce') THEN 'emr_cluster'
            WHEN bool_or(namespace IN ('AWS/ECS', 'ECS/ContainerInsights')) AND resource_id LIKE '%:service/%'
                THEN 'ecs_service'
            WHEN bool_or(namespace IN ('AWS/ECS', 'ECS/ContainerInsights')) THEN 'ecs_cluster'
            ELSE 'other'
        END AS resource_kind,
        max(value) FILTER (WHERE metric IN ('CPUUtilization', 'pod_cpu_utilization') AND stat = 'Average') AS cpu_pct,
        CASE WHEN resource_id LIKE '%:service/%' THEN
            100 * max(value) FILTER (WHERE namespace = 'ECS/ContainerInsights' AND metric = 'CpuUtilized')
            / nullif(max(value) FILTER (WHERE namespace = 'ECS/ContainerInsights' AND metric = 'CpuReserved'), 0)
        END AS insights_cpu_pct,
        CASE WHEN resource_id LIKE '%:service/%' THEN
            100 * max(value) FILTER (WHERE namespace = 'ECS/ContainerInsights' AND metric = 'MemoryUtilized')
            / nullif(max(value) FILTER (WHERE namespace = 'ECS/ContainerInsights' AND metric = 'MemoryReserved'), 0)
        END AS insights_mem_pct,
        max(value) FILTER (WHERE metric IN ('CPUUtilization', 'pod_cpu_utilization') AND stat = 'Maximum') AS cpu_max_pct,
        max(value) FILTER (WHERE metric IN ('MemoryUtilization', 'pod_memory_utilization') AND stat = 'Average') AS mem_pct,
        max(value) FILTER (WHERE metric IN ('CPUReservation', 'node_cpu_reserved_capacity') AND stat = 'Average') AS cpu_reserved_pct,
        max(value) FILTER (WHERE metric IN ('MemoryReservation', 'node_memory_reserved_capacity') AND stat = 'Average') AS mem_reserved_pct,
        100 - max(value) FILTER (WHERE metric = 'YARNMemoryAvailablePercentage') AS yarn_mem_used_pct,
        max(value) FILTER (WHERE metric = 'IsIdle') AS emr_is_idle,
        max(value) FILTER (WHERE metric = 'AppsRunning') AS emr_apps_running,
        max(value) FILTER (WHERE metric = 'ContainerPending') AS emr_containers_pending,
        max(value) FILTER (WHERE metric = 'pod_cpu_usage_total' AND stat = 'Average') / 1000 AS cpu_cores,
        max(value) FILTER (WHERE metric = 'pod_cpu_usage_total' AND stat = 'Maximum') / 1000 AS cpu_max_cores,
        max(value) FILTER (WHERE metric = 'pod_memory_working_set' AND stat IN ('Average', 'Maximum')) AS mem_bytes,
        max(value) FILTER (WHERE metric = 'pod_cpu_request') / 1000 AS cpu_request_cores,
        max(value) FILTER (WHERE metric = 'pod_memory_request') AS mem_request_bytes,
        coalesce(sum(value) FILTER (WHERE metric = 'pod_container_status_terminated_reason_oom_killed'), 0)
            AS oom_kills,
        CAST(sum(n - 1) AS INTEGER) AS dup_count,
        bool_or(nonfinite) AS nonfinite
    FROM dedup
    GROUP BY resource_id, ts
)
SELECT
    account_id,
    date,
    resource_id,
    resource_kind,
    ts,
    coalesce(insights_cpu_pct, cpu_pct) AS cpu_pct,
    coalesce(cpu_max_pct, insights_cpu_pct, cpu_pct) AS cpu_peak_pct,
    coalesce(insights_mem_pct, mem_pct) AS mem_pct,
    insights_cpu_pct IS NOT NULL OR insights_mem_pct IS NOT NULL AS from_insights,
    cpu_reserved_pct,
    mem_reserved_pct,
    yarn_mem_used_pct,
    emr_is_idle,
    emr_apps_running,
    emr_containers_pending,
    cpu_cores,
    coalesce(cpu_max_cores, cpu_cores) AS cpu_peak_cores,
    mem_bytes,
    cpu_request_cores,
    mem_request_bytes,
    CAST(oom_kills AS INTEGER) AS oom_kills,
    dup_count + 1 AS dup_count,
    coalesce(
        (coalesce(insights_cpu_pct, cpu_pct) NOT BETWEEN 0 AND 100)
        OR (coalesce(insights_mem_pct, mem_pct) NOT BETWEEN 0 AND 100),
        false
    ) AS out_of_range,
    nonfinite,
    CAST(
        epoch(ts - lag(ts, 1, CAST(date AS TIMESTAMPTZ) - INTERVAL 5 MINUTE)
            OVER (PARTITION BY resource_id ORDER BY ts)) / 300 - 1 AS INTEGER
    ) AS missing_slots_before
FROM pivoted
ORDER BY resource_id, ts
