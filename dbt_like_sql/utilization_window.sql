-- description: Utilisation statistics per resource over a trailing window of days ending with the
--   partition's day (14 days by default, as Compute Optimizer; 7, 32 or 93 by configuration:
--   CLOUDOPT_UTILIZATION_WINDOW_DAYS). The same statistics as utilization_daily, computed over every
--   5-minute sample of the window: percentiles are exact order statistics of the window's samples
--   (quantile_cont, numpy 'linear'), never averages of daily percentiles. Days of the window with no
--   partition or no samples lower coverage_pct; they are never zeros. Data sufficiency: at least 30
--   hours of samples (Compute Optimizer's minimum). confidence_pct = coverage x day spread: 100 x
--   min(1, samples / expected) x min(1, days_with_data / min(7, window_days)) (a window seen on fewer
--   than 7 days has not seen a weekly cycle); confidence is high (>= 80), medium (>= 50), low, or
--   insufficient (less than 30 hours). Trusted Advisor's low-utilisation rule is applied as AWS
--   does: idle (CPU <= 10 % and network <= 5 MB) on 4 or more days of the window. NaN and infinite
--   samples are excluded (nonfinite_samples counts them), never a statistic. For right-sizing:
--   cpu_saturated_share_pct (share of the samples with a CPU peak whose 5-minute average is at least
--   90 %), and the spread and trend of the daily CPU peaks over the days with at least a quarter of
--   their samples (cpu_daily_peak_*: count, mean, population standard deviation, and the means of
--   the first floor(n / 2) such days and of the rest, in date order).
-- grain: one row per (account_id, date, resource_id)
-- partitioned_by: account_date
-- window_days: 14
-- window_over: stg_utilization_5m, stg_cluster_metrics_5m, utilization_daily
-- expect_rows_from: stg_utilization_5m, stg_cluster_metrics_5m
-- group: features
WITH samples AS (
    SELECT resource_id, cpu_peak_pct, mem_pct, net_in_bytes + net_out_bytes AS net_bytes, ts
    FROM {{ ref('stg_utilization_5m') }}
    UNION ALL
    SELECT resource_id, cpu_peak_pct, mem_pct, NULL, ts
    FROM {{ ref('stg_cluster_metrics_5m') }}
    WHERE resource_kind <> 'container'
),
stats AS (
    -- The one pass over the window's samples: what per-day partial aggregates cannot give exactly.
    -- Exact quantiles need every sample (quantile_cont: one selection pass per list, no full sort);
    -- the network mean needs the samples where both directions are known.
    SELECT
        resource_id,
        count(*) AS samples,
        quantile_cont(cpu_peak_pct, [0.5, 0.9, 0.95, 0.99, 0.995]) AS cpu_q,
        quantile_cont(mem_pct, [0.5, 0.9, 0.95, 0.99, 0.995]) AS mem_q,
        avg(net_bytes) AS net_mean_bytes,
        quantile_cont(net_bytes, [0.5, 0.9, 0.95, 0.99, 0.995]) AS net_q,
        min(ts) AS first_sample_ts,
        max(ts) AS last_sample_ts
    FROM samples
    GROUP BY resource_id
),
days AS (
    -- Per-day partial aggregates from utilization_daily: counts, sums, maxima and idle days (exact),
    -- means as sum(daily mean x daily count) / sum(daily count) (exact up to floating-point rounding,
    -- about 1e-15 relative).
    SELECT
        resource_id,
        arg_max(resource_kind, date) AS resource_kind,
        count(*) FILTER (WHERE samples > 0) AS days_with_data,
        sum(cpu_samples) AS cpu_samples,
        sum(mem_samples) AS mem_samples,
        sum(net_samples) AS net_samples,
        bool_or(cpu_peak_is_maximum) AS cpu_peak_is_maximum,
        sum(net_in_bytes) AS net_in_bytes,
        sum(net_out_bytes) AS net_out_bytes,
        count(*) FILTER (WHERE idle_cost_explorer) AS idle_days_cost_explorer,
        count(*) FILTER (WHERE idle_trusted_advisor) AS idle_days_trusted_advisor,
        count(idle_trusted_advisor) AS days_with_network_data,
        sum(out_of_range_samples) AS out_of_range_samples,
        sum(nonfinite_samples) AS nonfinite_samples,
        sum(duplicate_samples) AS duplicate_samples,
        sum(cpu_mean_pct * cpu_samples) / nullif(sum(cpu_samples), 0) AS cpu_mean_pct,
        max(cpu_max_pct) AS cpu_max_pct,
        sum(mem_mean_pct * mem_samples) / nullif(sum(mem_samples), 0) AS mem_mean_pct,
        max(mem_max_pct) AS mem_max_pct,
        max(net_max_bytes) AS net_max_bytes,
        sum(cpu_peak_samples) AS cpu_peak_samples,
        sum(cpu_saturated_samples) AS cpu_saturated_samples,
        -- The daily peaks of the days with at least a quarter of their 288 samples, in date order.
        list(cpu_max_pct ORDER BY date) FILTER (WHERE cpu_peak_samples >= 72 AND cpu_max_pct IS NOT NULL)
            AS daily_peaks
    FROM {{ ref('utilization_daily') }}
    GROUP BY resource_id
),
peaks AS (
    SELECT
        resource_id,
        len(daily_peaks) AS cpu_daily_peak_days,
        list_avg(daily_peaks) AS cpu_daily_peak_mean_pct,
        list_aggregate(daily_peaks, 'stddev_pop') AS cpu_daily_peak_std_pct,
        list_avg(daily_peaks[1:len(daily_peaks) // 2]) AS cpu_daily_peak_first_half_pct,
        list_avg(daily_peaks[len(daily_peaks) // 2 + 1:]) AS cpu_daily_peak_second_half_pct
    FROM days
)
SELECT
    {{ var('account_id') }} AS account_id,
    CAST({{ var('date') }} AS DATE) AS date,
    s.resource_id,
    d.resource_kind,
    CAST({{ var('window_days') }} AS INTEGER) AS window_days,
    CAST({{ var('window_start') }} AS DATE) AS window_start,
    CAST(d.days_with_data AS INTEGER) AS days_with_data,
    CAST(s.samples AS INTEGER) AS samples,
    CAST(288 * {{ var('window_days') }} AS INTEGER) AS expected_samples,
    round(100.0 * s.samples / (288 * {{ var('window_days') }}), 3) AS coverage_pct,
    round(s.samples * 5 / 60.0, 3) AS hours_of_data,
    s.samples * 5 >= 30 * 60 AS sufficient_data,
    round(100.0 * least(1.0, s.samples / (288.0 * {{ var('window_days') }}))
        * least(1.0, d.days_with_data / least(7.0, {{ var('window_days') }})), 1) AS confidence_pct,
    CASE
        WHEN s.samples * 5 < 30 * 60 THEN 'insufficient'
        WHEN 100.0 * least(1.0, s.samples / (288.0 * {{ var('window_days') }}))
            * least(1.0, d.days_with_data / least(7.0, {{ var('window_days') }})) >= 80 THEN 'high'
        WHEN 100.0 * least(1.0, s.samples / (288.0 * {{ var('window_days') }}))
            * least(1.0, d.days_with_data / least(7.0, {{ var('window_days') }})) >= 50 THEN 'medium'
        ELSE 'low'
    END AS confidence,
    CAST(d.cpu_samples AS INTEGER) AS cpu_samples,
    CAST(d.mem_samples AS INTEGER) AS mem_samples,
    CAST(d.net_samples AS INTEGER) AS net_samples,
    d.cpu_peak_is_maximum,
    d.cpu_mean_pct,
    s.cpu_q[1] AS cpu_p50_pct,
    s.cpu_q[2] AS cpu_p90_pct,
    s.cpu_q[3] AS cpu_p95_pct,
    s.cpu_q[4] AS cpu_p99_pct,
    s.cpu_q[5] AS cpu_p995_pct,
    d.cpu_max_pct,
    d.mem_mean_pct,
    s.mem_q[1] AS mem_p50_pct,
    s.mem_q[2] AS mem_p90_pct,
    s.mem_q[3] AS mem_p95_pct,
    s.mem_q[4] AS mem_p99_pct,
    s.mem_q[5] AS mem_p995_pct,
    d.mem_max_pct,
    d.net_in_bytes,
    d.net_out_bytes,
    s.net_mean_bytes,
    s.net_q[1] AS net_p50_bytes,
    s.net_q[2] AS net_p90_bytes,
    s.net_q[3] AS net_p95_bytes,
    s.net_q[4] AS net_p99_bytes,
    s.net_q[5] AS net_p995_bytes,
    d.net_max_bytes,
    CAST(d.idle_days_cost_explorer AS INTEGER) AS idle_days_cost_explorer,
    CAST(d.idle_days_trusted_advisor AS INTEGER) AS idle_days_trusted_advisor,
    d.cpu_max_pct <= 1 AS idle_cost_explorer,
    CASE WHEN d.days_with_network_data = 0 THEN NULL ELSE d.idle_days_trusted_advisor >= 4 END
        AS low_utilization_trusted_advisor,
    CAST(d.out_of_range_samples AS INTEGER) AS out_of_range_samples,
    CAST(d.duplicate_samples AS INTEGER) AS duplicate_samples,
    s.first_sample_ts,
    s.last_sample_ts,
    CAST(d.cpu_peak_samples AS INTEGER) AS cpu_peak_samples,
    CAST(d.cpu_saturated_samples AS INTEGER) AS cpu_saturated_samples,
    100.0 * d.cpu_saturated_samples / nullif(d.cpu_peak_samples, 0) AS cpu_saturated_share_pct,
    CAST(coalesce(p.cpu_daily_peak_days, 0) AS INTEGER) AS cpu_daily_peak_days,
    p.cpu_daily_peak_mean_pct,
    p.cpu_daily_peak_std_pct,
    p.cpu_daily_peak_first_half_pct,
    p.cpu_daily_peak_second_half_pct,
    CAST(d.nonfinite_samples AS INTEGER) AS nonfinite_samples
FROM stats AS s
JOIN days AS d USING (resource_id)
LEFT JOIN peaks AS p USING (resource_id)
ORDER BY s.resource_id
