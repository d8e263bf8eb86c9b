-- description: Daily utilisation statistics per resource (EC2 instances, including the nodes of
--   Kubernetes, ECS and EMR clusters; ECS clusters and services, EMR clusters and pods where
--   cluster_metrics_5m has them): sample count and coverage, then mean, p50, p90, p95, p99, p99.5
--   and max of CPU, of memory and of network traffic (bytes in + out per 5-minute sample).
--   CPU percentiles and max are over the 5-minute maxima where the source gives them (CloudWatch
--   Maximum, as Compute Optimizer does), else over the 5-minute averages (cpu_peak_is_maximum
--   says which); cpu_mean_pct is the mean of the 5-minute averages. Idle flags: Cost Explorer
--   (max CPU <= 1 %) and Trusted Advisor (daily mean CPU <= 10 % and network in + out <= 5 MB;
--   NULL when the source has no network data). Missing samples are not zeros: every statistic is
--   over the samples present (NULL when there are none), and coverage_pct says how many of the day's
--   288 five-minute slots had one. NaN and infinite values are excluded in the staging models
--   (nonfinite_samples counts the samples that had one), so no statistic is NaN or infinite;
--   out_of_range_samples counts samples outside 0-100 % or with a negative byte count. Quantiles
--   are exact (DuckDB quantile_cont: linear interpolation between order statistics, numpy's
--   default 'linear', Hyndman and Fan type 7). cpu_peak_samples counts the samples with a CPU peak,
--   cpu_saturated_samples those whose 5-minute average (the peak where there is no average) is at
--   least 90 %: the saturation rule of right-sizing.
-- grain: one row per (account_id, date, resource_id)
-- partitioned_by: account_date
-- group: features
-- batch: true
WITH samples AS (
    SELECT
        account_id, date, resource_id, 'ec2_instance' AS resource_kind, cpu_pct, cpu_peak_pct,
        cpu_peak_is_maximum, mem_pct, net_in_bytes, net_out_bytes, dup_count, out_of_range, nonfinite,
        missing_slots_before, missing_slots_after
    FROM {{ ref('stg_utilization_5m') }}
    UNION ALL
    SELECT
        account_id, date, resource_id, resource_kind, cpu_pct, cpu_peak_pct,
        cpu_pct IS DISTINCT FROM cpu_peak_pct, mem_pct, NULL, NULL, dup_count, out_of_range, nonfinite,
        missing_slots_before, NULL
    FROM {{ ref('stg_cluster_metrics_5m') }}
    WHERE resource_kind <> 'container'
),
agg AS (
    -- One hash aggregate per resource and day, over every partition of the batch at once (the batch
    -- header: account_id and date come from the partition paths). A max is the 1.0 quantile of the
    -- same list: x(n-1), no separate aggregate.
    SELECT
        account_id,
        date,
        resource_id,
        any_value(resource_kind) AS resource_kind,
        count(*) AS samples,
        count(cpu_pct) AS cpu_samples,
        count(mem_pct) AS mem_samples,
        count(net_in_bytes) AS net_in_samples,
        count(net_out_bytes) AS net_out_samples,
        bool_or(cpu_peak_is_maximum) AS cpu_peak_is_maximum,
        avg(cpu_pct) AS cpu_mean_pct,
        quantile_cont(cpu_peak_pct, [0.5, 0.9, 0.95, 0.99, 0.995, 1.0]) AS cpu_q,
        avg(mem_pct) AS mem_mean_pct,
        quantile_cont(mem_pct, [0.5, 0.9, 0.95, 0.99, 0.995, 1.0]) AS mem_q,
        sum(net_in_bytes) AS net_in_bytes,
        sum(net_out_bytes) AS net_out_bytes,
        avg(net_in_bytes + net_out_bytes) AS net_mean_bytes,
        quantile_cont(net_in_bytes + net_out_bytes, [0.5, 0.9, 0.95, 0.99, 0.995, 1.0]) AS net_q,
        -- count(nullif(x, 0)) counts the rows where x is set: plain counts cost less per row than
        -- FILTER clauses or per-row arithmetic (about 15 % of this statement in the benchmark).
        count(nullif(out_of_range, false)) AS out_of_range_samples,
        count(nullif(nonfinite, false)) AS nonfinite_samples,
        sum(dup_count) - count(*) AS duplicate_samples,
        count(nullif(missing_slots_before, 0)) + count(nullif(missing_slots_after, 0)) AS gaps,
        greatest(max(missing_slots_before), max(missing_slots_after), 0) AS longest_gap_slots,
        count(cpu_peak_pct) AS cpu_peak_samples,
        -- Saturation is read on the 5-minute averages (the peak where a slot has no average).
        count(nullif(coalesce(cpu_pct, cpu_peak_pct) >= 90, false)) AS cpu_saturated_samples
    FROM samples
    GROUP BY account_id, date, resource_id
)
SELECT
    account_id,
    date,
    resource_id,
    resource_kind,
    CAST(samples AS INTEGER) AS samples,
    288 AS expected_samples,
    round(100.0 * samples / 288, 3) AS coverage_pct,
    CAST(cpu_samples AS INTEGER) AS cpu_samples,
    CAST(mem_samples AS INTEGER) AS mem_samples,
    CAST(least(net_in_samples, net_out_samples) AS INTEGER) AS net_samples,
    cpu_peak_is_maximum,
    cpu_mean_pct,
    cpu_q[1] AS cpu_p50_pct,
    cpu_q[2] AS cpu_p90_pct,
    cpu_q[3] AS cpu_p95_pct,
    cpu_q[4] AS cpu_p99_pct,
    cpu_q[5] AS cpu_p995_pct,
    cpu_q[6] AS cpu_max_pct,
    mem_mean_pct,
    mem_q[1] AS mem_p50_pct,
    mem_q[2] AS mem_p90_pct,
    mem_q[3] AS mem_p95_pct,
    mem_q[4] AS mem_p99_pct,
    mem_q[5] AS mem_p995_pct,
    mem_q[6] AS mem_max_pct,
    net_in_bytes,
    net_out_bytes,
    net_mean_bytes,
    net_q[1] AS net_p50_bytes,
    net_q[2] AS net_p90_bytes,
    net_q[3] AS net_p95_bytes,
    net_q[4] AS net_p99_bytes,
    net_q[5] AS net_p995_bytes,
    net_q[6] AS net_max_bytes,
    cpu_q[6] <= 1 AS idle_cost_explorer,
    CASE WHEN net_in_samples + net_out_samples = 0 OR cpu_samples = 0 THEN NULL
         ELSE cpu_mean_pct <= 10
              AND coalesce(net_in_bytes, 0) + coalesce(net_out_bytes, 0) <= 5 * 1000 * 1000
    END AS idle_trusted_advisor,
    net_in_samples > 0 OR net_out_samples > 0 AS has_network_data,
    CAST(out_of_range_samples AS INTEGER) AS out_of_range_samples,
    CAST(duplicate_samples AS INTEGER) AS duplicate_samples,
    CAST(gaps AS INTEGER) AS gaps,
    CAST(5 * longest_gap_slots AS INTEGER) AS longest_gap_minutes,
    CAST(cpu_peak_samples AS INTEGER) AS cpu_peak_samples,
    CAST(cpu_saturated_samples AS INTEGER) AS cpu_saturated_samples,
    CAST(nonfinite_samples AS INTEGER) AS nonfinite_samples
FROM agg
ORDER BY account_id, date, resource_id
