-- description: Per account, day and deployment type: EC2 instances seen, how many had metrics,
--   their mean CPU and the share that were idle by Cost Explorer's rule. A first look at a fleet.
-- grain: one row per (account_id, date, deployment_type)
-- partitioned_by: none
-- group: warehouse
SELECT
    r.account_id,
    r.date,
    r.deployment_type,
    count(*) AS instances,
    count(u.resource_id) AS instances_with_metrics,
    round(avg(u.cpu_mean_pct), 2) AS avg_cpu_mean_pct,
    round(avg(u.cpu_p95_pct), 2) AS avg_cpu_p95_pct,
    round(100.0 * avg(CASE WHEN u.idle_cost_explorer THEN 1 ELSE 0 END), 1) AS idle_pct
FROM resources AS r
LEFT JOIN utilization_daily AS u
    ON u.account_id = r.account_id AND u.date = r.date AND u.resource_id = r.resource_id
WHERE r.resource_kind = 'ec2_instance'
GROUP BY ALL
ORDER BY ALL
