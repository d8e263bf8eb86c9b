-- description: Vertical Pod Autoscaler-style recommendations per container from decaying
--   histograms over a trailing window of 8 days, mirroring the VPA recommender's defaults:
--   exponential buckets (first bucket 0.01 core or 1e7 bytes, each 5 % wider than the one before,
--   up to 1000 cores or 1e12 bytes), sample weights halving every 24 hours back from the end of the
--   partition's day; CPU: every 5-minute usage sample weighted by max(CPU request, 0.1 core);
--   memory: one sample per UTC day (the aggregation interval) at that day's peak working set,
--   8 days (intervals) kept; on a day with an OOM kill the day's peak is bumped to max(1.2 x peak,
--   peak + 100 MiB). A percentile is the end of the first bucket whose cumulative weight reaches
--   p x total (VPA's Histogram.Percentile). lower / target / upper are p50 / p90 / p95 (VPA's
--   lowerBound / target / upperBound percentiles); *_recommended adds the 15 % safety margin and
--   the minimums (25 millicores, 250 MiB), without VPA's confidence multipliers. Two sources:
--   Container Insights pods (stg_cluster_metrics_5m rows of resource_kind 'container',
--   pod_cpu_usage_total and pod_memory_working_set; resource_id the pod, container NULL) and
--   Prometheus usage of Kubernetes workloads (k8s_container_usage rows of scope 'container';
--   resource_id the workload, one row per container). The collector keeps, per 5-minute slot, the
--   busiest pod of the workload: that pod's CPU is the slot's sample, weighted by max(request, 0.1
--   core) x the pods in the slot (VPA adds one sample per pod), and its working set gives the day's
--   peak; the request is the day's k8s_workloads snapshot. A container without samples has no row.
-- grain: one row per (account_id, date, resource_id, container)
-- partitioned_by: account_date
-- window_days: 8
-- window_over: stg_cluster_metrics_5m, k8s_container_usage
-- optional_sources: k8s_container_usage, k8s_workloads
-- expect_rows_from: none
-- group: features
WITH params AS (
    SELECT * FROM (VALUES
        ('cpu', 0.01, 1.05, 1000.0),
        ('memory', 1e7, 1.05, 1e12)
    ) AS p(kind, first_bucket, ratio, max_value)
),
params_n AS (
    SELECT *, CAST(ceil(ln(max_value * (ratio - 1) / first_bucket + 1) / ln(ratio)) AS BIGINT) + 1 AS num_buckets
    FROM params
),
ref AS (
    SELECT CAST(CAST({{ var('date') }} AS DATE) AS TIMESTAMPTZ) + INTERVAL 1 DAY AS ref_ts
),
k8s_spec AS (
    SELECT resource_id, container, any_value(cpu_request_cores) AS cpu_request_cores,
           any_value(mem_request_bytes) AS mem_request_bytes
    FROM {{ ref('k8s_workloads') }}
    WHERE container IS NOT NULL
    GROUP BY resource_id, container
),
containers AS (
    SELECT resource_id, '' AS container, ts, cpu_cores, cpu_request_cores, 1 AS pods, mem_bytes,
           mem_request_bytes, oom_kills
    FROM {{ ref('stg_cluster_metrics_5m') }} WHERE resource_kind = 'container'
    UNION ALL
    SELECT u.resource_id, u.container, u.ts, u.cpu_cores_max, s.cpu_request_cores, coalesce(u.replicas, 1),
           u.mem_bytes_max, s.mem_request_bytes, coalesce(u.oom_kills, 0)
    FROM {{ ref('k8s_container_usage') }} AS u
    LEFT JOIN k8s_spec AS s USING (resource_id, container)
    WHERE u.scope = 'container'
),
cpu_samples AS (
    SELECT resource_id, container, 'cpu' AS kind, cpu_cores AS value,
           greatest(coalesce(cpu_request_cores, 0), 0.1) * pods AS base_weight, ts
    FROM containers
    WHERE cpu_cores IS NOT NULL
),
mem_days AS (
    SELECT resource_id, container, CAST(ts AS DATE) AS day, max(mem_bytes) AS peak, arg_max(ts, mem_bytes) AS ts,
           sum(oom_kills) AS oom_kills
    FROM containers
    WHERE mem_bytes IS NOT NULL
    GROUP BY resource_id, container, CAST(ts AS DATE)
),
mem_samples AS (
    SELECT resource_id, container, 'memory' AS kind,
           CASE WHEN oom_kills > 0 THEN greatest(1.2 * peak, peak + 100 * 1024 * 1024) ELSE peak END AS value,
           1.0 AS base_weight, ts
    FROM mem_days
),
weighted AS (
    SELECT
        s.resource_id,
        s.container,
        s.kind,
        CASE WHEN s.value < p.first_bucket THEN 0
             ELSE least(CAST(floor(ln(s.value * (p.ratio - 1) / p.first_bucket + 1) / ln(p.ratio)) AS BIGINT),
                        p.num_buckets - 1)
        END AS bucket,
        s.base_weight * pow(2.0, epoch(s.ts - ref.ref_ts) / 86400.0) AS weight
    FROM (SELECT * FROM cpu_samples UNION ALL SELECT * FROM mem_samples) AS s
    JOIN params_n AS p USING (kind)
    CROSS JOIN ref
),
hist AS (
    SELECT resource_id, container, kind, bucket, sum(weight) AS weight, count(*) AS samples
    FROM weighted
    GROUP BY ALL
),
cum AS (
    SELECT
        *,
        sum(weight) OVER (PARTITION BY resource_id, container, kind ORDER BY bucket ROWS UNBOUNDED PRECEDING) AS cum_weight,
        sum(weight) OVER (PARTITION BY resource_id, container, kind) AS total_weight
    FROM hist
),
pct AS (
    SELECT
        resource_id,
        container,
        kind,
        sum(samples) AS samples,
        any_value(total_weight) AS total_weight,
        coalesce(min(bucket) FILTER (WHERE cum_weight >= 0.50 * total_weight), max(bucket)) AS b50,
        coalesce(min(bucket) FILTER (WHERE cum_weight >= 0.90 * total_weight), max(bucket)) AS b90,
        coalesce(min(bucket) FILTER (WHERE cum_weight >= 0.95 * total_weight), max(bucket)) AS b95
    FROM cum
    GROUP BY resource_id, container, kind
),
bounds AS (
    -- VPA returns the end of the bucket (the start of the next), except for the unbounded last one.
    SELECT
        pct.resource_id,
        pct.container,
        pct.kind,
        pct.samples,
        pct.total_weight,
        p.first_bucket * (pow(p.ratio, CASE WHEN b50 < p.num_buckets - 1 THEN b50 + 1 ELSE b50 END) - 1) / (p.ratio - 1) AS v50,
        p.first_bucket * (pow(p.ratio, CASE WHEN b90 < p.num_buckets - 1 THEN b90 + 1 ELSE b90 END) - 1) / (p.ratio - 1) AS v90,
        p.first_bucket * (pow(p.ratio, CASE WHEN b95 < p.num_buckets - 1 THEN b95 + 1 ELSE b95 END) - 1) / (p.ratio - 1) AS v95
    FROM pct
    JOIN params_n AS p USING (kind)
    WHERE pct.total_weight > 1e-10
),
latest AS (
    SELECT
        resource_id,
        container,
        arg_max(cpu_request_cores, ts) FILTER (WHERE cpu_request_cores IS NOT NULL) AS cpu_request_cores,
        arg_max(mem_request_bytes, ts) FILTER (WHERE mem_request_bytes IS NOT NULL) AS mem_request_bytes,
        CAST(sum(oom_kills) AS INTEGER) AS oom_events
    FROM containers
    GROUP BY resource_id, container
)
SELECT
    {{ var('account_id') }} AS account_id,
    CAST({{ var('date') }} AS DATE) AS date,
    l.resource_id,
    nullif(l.container, '') AS container,
    CAST({{ var('window_days') }} AS INTEGER) AS window_days,
    CAST(c.samples AS INTEGER) AS cpu_samples,
    c.total_weight AS cpu_total_weight,
    c.v50 AS cpu_lower_cores,
    c.v90 AS cpu_target_cores,
    c.v95 AS cpu_upper_cores,
    CASE WHEN c.v90 IS NOT NULL THEN greatest(1.15 * c.v90, 0.025) END AS cpu_recommended_cores,
    CAST(m.samples AS INTEGER) AS mem_peaks,
    m.total_weight AS mem_total_weight,
    m.v50 AS mem_lower_bytes,
    m.v90 AS mem_target_bytes,
    m.v95 AS mem_upper_bytes,
    CASE WHEN m.v90 IS NOT NULL THEN greatest(1.15 * m.v90, 250.0 * 1024 * 1024) END AS mem_recommended_bytes,
    l.cpu_request_cores,
    l.mem_request_bytes,
    l.oom_events
FROM latest AS l
LEFT JOIN bounds AS c ON c.resource_id = l.resource_id AND c.container = l.container AND c.kind = 'cpu'
LEFT JOIN bounds AS m ON m.resource_id = l.resource_id AND m.container = l.container AND m.kind = 'memory'
WHERE c.resource_id IS NOT NULL OR m.resource_id IS NOT NULL
ORDER BY l.resource_id, l.container
