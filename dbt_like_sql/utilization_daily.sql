-- description: Daily utilisation statistics per resource: coverage, mean, percentiles and max of
--   CPU (over the 5-minute maxima where the source gives them, as Compute Optimizer does) and of
--   memory, plus network totals and the idle flags of Cost Explorer (max CPU <= 1 %) and Trusted
--   Advisor (daily CPU <= 10 % and network <= 5 MB; NULL when the source has no network data). Missing samples are not zeros: every
--   statistic is over the samples present, and coverage_pct says how many of the 288 there were.
--   Quantiles are exact (DuckDB quantile_cont: linear interpolation between order statistics, the
--   same definition as numpy's default 'linear').
-- grain: one row per (account_id, date, resource_id)
-- partitioned_by: account_date
-- group: features
SELECT
    account_id,
    date,
    resource_id,
    CAST(count(*) AS INTEGER) AS samples,
    round(100.0 * count(*) / 288, 3) AS coverage_pct,
    CAST(count(mem_pct) AS INTEGER) AS mem_samples,
    avg(cpu_pct) AS cpu_mean_pct,
    quantile_cont(cpu_peak_pct, 0.50) AS cpu_p50_pct,
    quantile_cont(cpu_peak_pct, 0.90) AS cpu_p90_pct,
    quantile_cont(cpu_peak_pct, 0.95) AS cpu_p95_pct,
    quantile_cont(cpu_peak_pct, 0.99) AS cpu_p99_pct,
    quantile_cont(cpu_peak_pct, 0.995) AS cpu_p995_pct,
    max(cpu_peak_pct) AS cpu_max_pct,
    avg(mem_pct) AS mem_mean_pct,
    quantile_cont(mem_pct, 0.50) AS mem_p50_pct,
    quantile_cont(mem_pct, 0.90) AS mem_p90_pct,
    quantile_cont(mem_pct, 0.95) AS mem_p95_pct,
    quantile_cont(mem_pct, 0.99) AS mem_p99_pct,
    quantile_cont(mem_pct, 0.995) AS mem_p995_pct,
    max(mem_pct) AS mem_max_pct,
    sum(net_in_bytes) AS net_in_bytes,
    sum(net_out_bytes) AS net_out_bytes,
    max(cpu_peak_pct) <= 1 AS idle_cost_explorer,
    CASE WHEN count(net_in_bytes) + count(net_out_bytes) = 0 THEN NULL
         ELSE avg(cpu_pct) <= 10
              AND coalesce(sum(net_in_bytes), 0) + coalesce(sum(net_out_bytes), 0) <= 5 * 1000 * 1000
    END AS idle_trusted_advisor,
    count(net_in_bytes) > 0 AS has_network_data,
    CAST(sum(CASE WHEN out_of_range THEN 1 ELSE 0 END) AS INTEGER) AS out_of_range_samples,
    CAST(sum(dup_count - 1) AS INTEGER) AS duplicate_samples
FROM {{ ref('stg_utilization_5m') }}
GROUP BY account_id, date, resource_id
ORDER BY resource_id
