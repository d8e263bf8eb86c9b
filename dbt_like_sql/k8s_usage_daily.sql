-- description: Kubernetes usage per workload container and UTC day, from the 5-minute rows of
--   k8s_container_usage (scope 'container'; the pods of one owner already aggregated by the
--   collector: per slot the sum over pods and the busiest pod). CPU percentiles P50/P90/P95/P99
--   and the max are exact order statistics (quantile_cont) of the busiest pod's 5-minute CPU
--   (cpu_cores_max: a request applies to every pod, so it must cover the busiest one);
--   cpu_mean_cores is the mean per pod (sum over pods / pods). Memory: the day's peak working set of
--   the busiest pod (mem_peak_bytes) and its P95, and the mean per pod (mem_mean_bytes, for an HPA on
--   memory utilisation). Throttling (throttled periods / CFS periods, the
--   worst pod of the slot): mean, P95, max and the slots at or over 10 %. OOM kills and restarts
--   are the day's sums; replicas are the pods with a working-set sample in a slot (min, mean, max).
--   coverage_pct = 100 x slots with a sample / 288 (a container that ran half the day has 50 %);
--   first_ts / last_ts bound its samples (a rollout or a restart mid-window shows there). Requests
--   and limits are the day's k8s_workloads snapshot of the container (NULL when the snapshot has no
--   such container: a workload gone from the API). Both sources are optional: without a clusters
--   file (CLOUDOPT_K8S_CLUSTERS) the model writes an empty partition.
-- grain: one row per (account_id, date, resource_id, container)
-- partitioned_by: account_date
-- optional_sources: k8s_container_usage, k8s_workloads
-- expect_rows_from: k8s_container_usage
-- group: features
WITH usage AS (
    SELECT *
    FROM {{ ref('k8s_container_usage') }}
    WHERE scope = 'container'
      AND CAST(ts AS DATE) = CAST({{ var('date') }} AS DATE)
      AND mem_bytes IS NOT NULL
),
spec AS (
    SELECT
        resource_id,
        container,
        any_value(cpu_request_cores) AS cpu_request_cores,
        any_value(mem_request_bytes) AS mem_request_bytes,
        any_value(cpu_limit_cores) AS cpu_limit_cores,
        any_value(mem_limit_bytes) AS mem_limit_bytes,
        any_value(qos_class) AS qos_class
    FROM {{ ref('k8s_workloads') }}
    WHERE container IS NOT NULL
    GROUP BY resource_id, container
),
stats AS (
    SELECT
        resource_id,
        container,
        any_value(cluster) AS cluster,
        any_value(namespace) AS namespace,
        any_value(workload_kind) AS workload_kind,
        any_value(workload) AS workload,
        count(*) AS samples,
        count(cpu_cores_max) AS cpu_samples,
        min(ts) AS first_ts,
        max(ts) AS last_ts,
        quantile_cont(cpu_cores_max, [0.5, 0.9, 0.95, 0.99]) AS cpu_q,
        max(cpu_cores_max) AS cpu_max_cores,
        sum(cpu_cores) / nullif(sum(replicas) FILTER (WHERE cpu_cores IS NOT NULL), 0) AS cpu_mean_cores,
        max(mem_bytes_max) AS mem_peak_bytes,
        quantile_cont(mem_bytes_max, 0.95) AS mem_p95_bytes,
        sum(mem_bytes) / nullif(sum(replicas), 0) AS mem_mean_bytes,
        avg(cpu_throttled_ratio) AS throttled_mean_ratio,
        quantile_cont(cpu_throttled_ratio, 0.95) AS throttled_p95_ratio,
        max(cpu_throttled_ratio) AS throttled_max_ratio,
        count(*) FILTER (WHERE cpu_throttled_ratio >= 0.10) AS throttled_slots,
        count(cpu_throttled_ratio) AS throttle_samples,
        coalesce(sum(oom_kills), 0) AS oom_kills,
        coalesce(sum(restarts), 0) AS restarts,
        min(replicas) AS replicas_min,
        avg(replicas) AS replicas_mean,
        max(replicas) AS replicas_max
    FROM usage
    GROUP BY resource_id, container
)
SELECT
    {{ var('account_id') }} AS account_id,
    CAST({{ var('date') }} AS DATE) AS date,
    s.cluster,
    s.resource_id,
    s.namespace,
    s.workload_kind,
    s.workload,
    s.container,
    CAST(s.samples AS INTEGER) AS samples,
    CAST(s.cpu_samples AS INTEGER) AS cpu_samples,
    round(100.0 * s.samples / 288, 3) AS coverage_pct,
    s.first_ts,
    s.last_ts,
    s.cpu_q[1] AS cpu_p50_cores,
    s.cpu_q[2] AS cpu_p90_cores,
    s.cpu_q[3] AS cpu_p95_cores,
    s.cpu_q[4] AS cpu_p99_cores,
    s.cpu_max_cores,
    s.cpu_mean_cores,
    s.mem_peak_bytes,
    s.mem_p95_bytes,
    s.mem_mean_bytes,
    s.throttled_mean_ratio,
    s.throttled_p95_ratio,
    s.throttled_max_ratio,
    CAST(s.throttled_slots AS INTEGER) AS throttled_slots,
    CAST(s.throttle_samples AS INTEGER) AS throttle_samples,
    CAST(s.oom_kills AS INTEGER) AS oom_kills,
    CAST(s.restarts AS INTEGER) AS restarts,
    CAST(s.replicas_min AS INTEGER) AS replicas_min,
    s.replicas_mean,
    CAST(s.replicas_max AS INTEGER) AS replicas_max,
    p.cpu_request_cores,
    p.mem_request_bytes,
    p.cpu_limit_cores,
    p.mem_limit_bytes,
    p.qos_class
FROM stats AS s
LEFT JOIN spec AS p USING (resource_id, container)
ORDER BY s.resource_id, s.container
