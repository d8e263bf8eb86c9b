-- description: Per ECS, EMR, Kubernetes (EKS) and custom cluster and day: capacity versus reserved
--   (requested) versus used CPU and memory. A custom cluster is the EC2 instances of deployment type
--   custom_cluster with one parent_id (the value of their cluster tag): cluster_id
--   'cloudopt:cluster=<value>', cluster_kind custom_cluster. Capacity is the sum over the cluster's EC2
--   instances (resources.parent_id = the cluster) of their instance type's vCPUs and memory (price_catalog of
--   the instance's region; types missing there are counted in unknown_capacity_nodes). Used: for
--   each 5-minute slot, the nodes that reported give sum(cpu_pct x vcpu) / sum(vcpu) (and the same
--   for memory, over the nodes with memory data); the day's mean, p95 and max are over those slot
--   values, and used_vcpu_* / used_mem_gib_* scale them to the full capacity. A node without a
--   sample in a slot is left out of that slot, never counted as 0. Requested: the cluster's own
--   CloudWatch series where the collector has them (ECS CPUReservation / MemoryReservation,
--   Container Insights node_cpu_reserved_capacity / node_memory_reserved_capacity, EMR 100 -
--   YARNMemoryAvailablePercentage for memory), as daily means; NULL when absent.
-- grain: one row per (account_id, date, cluster_id)
-- expect_rows_from: none
-- partitioned_by: account_date
-- group: features
WITH clusters AS (
    SELECT resource_id AS cluster_id, any_value(resource_kind) AS cluster_kind, any_value(name) AS cluster_name
    FROM {{ ref('resources') }}
    WHERE resource_kind IN ('ecs_cluster', 'emr_cluster', 'eks_cluster')
    GROUP BY resource_id
    UNION ALL
    SELECT 'cloudopt:cluster=' || parent_id AS cluster_id, 'custom_cluster' AS cluster_kind, parent_id AS cluster_name
    FROM {{ ref('resources') }}
    WHERE resource_kind = 'ec2_instance' AND deployment_type = 'custom_cluster' AND parent_id IS NOT NULL
    GROUP BY parent_id
),
catalog AS (
    SELECT region, instance_type, any_value(vcpu) AS vcpu, any_value(memory_gib) AS memory_gib
    FROM {{ ref('price_catalog') }}
    GROUP BY region, instance_type
),
nodes AS (
    SELECT r.resource_id, cl.cluster_id, CAST(c.vcpu AS DOUBLE) AS vcpu, c.memory_gib
    FROM {{ ref('resources') }} AS r
    JOIN clusters AS cl ON cl.cluster_id = CASE
        WHEN r.deployment_type = 'custom_cluster' THEN 'cloudopt:cluster=' || r.parent_id ELSE r.parent_id
    END
    LEFT JOIN catalog AS c ON c.region = r.region AND c.instance_type = r.instance_type
    WHERE r.resource_kind = 'ec2_instance'
),
capacity AS (
    SELECT
        cluster_id,
        count(*) AS nodes,
        sum(vcpu) AS capacity_vcpu,
        sum(memory_gib) AS capacity_mem_gib,
        count(*) FILTER (WHERE vcpu IS NULL) AS unknown_capacity_nodes
    FROM nodes
    GROUP BY cluster_id
),
slots AS (
    SELECT
        n.cluster_id,
        s.ts,
        count(*) AS node_samples,
        sum(s.cpu_pct * n.vcpu) / sum(n.vcpu) FILTER (WHERE s.cpu_pct IS NOT NULL) AS cpu_used_pct
    FROM {{ ref('stg_utilization_5m') }} AS s
    JOIN nodes AS n USING (resource_id)
    WHERE n.vcpu IS NOT NULL
    GROUP BY n.cluster_id, s.ts
),
used AS (
    SELECT
        cluster_id,
        sum(node_samples) AS node_samples,
        avg(cpu_used_pct) AS used_cpu_mean_pct,
        quantile_cont(cpu_used_pct, 0.95) AS used_cpu_p95_pct,
        max(cpu_used_pct) AS used_cpu_max_pct
    FROM slots
    GROUP BY cluster_id
),
mem_slots AS (
    SELECT
        n.cluster_id,
        s.ts,
        sum(s.mem_pct * n.memory_gib) / sum(n.memory_gib) AS mem_used_pct
    FROM {{ ref('stg_utilization_5m') }} AS s
    JOIN nodes AS n USING (resource_id)
    WHERE n.memory_gib IS NOT NULL AND s.mem_pct IS NOT NULL
    GROUP BY n.cluster_id, s.ts
),
mem_used AS (
    SELECT
        cluster_id,
        count(*) AS mem_slots,
        avg(mem_used_pct) AS used_mem_mean_pct,
        quantile_cont(mem_used_pct, 0.95) AS used_mem_p95_pct,
        max(mem_used_pct) AS used_mem_max_pct
    FROM mem_slots
    GROUP BY cluster_id
),
requested AS (
    SELECT
        resource_id AS cluster_id,
        count(*) AS requested_samples,
        avg(cpu_reserved_pct) AS requested_cpu_pct,
        avg(coalesce(mem_reserved_pct, yarn_mem_used_pct)) AS requested_mem_pct,
        avg(cpu_pct) AS reported_cpu_pct,
        avg(mem_pct) AS reported_mem_pct
    FROM {{ ref('stg_cluster_metrics_5m') }}
    WHERE resource_kind IN ('ecs_cluster', 'emr_cluster', 'other')
    GROUP BY resource_id
)
SELECT
    {{ var('account_id') }} AS account_id,
    CAST({{ var('date') }} AS DATE) AS date,
    cl.cluster_id,
    cl.cluster_kind,
    cl.cluster_name,
    CAST(coalesce(cap.nodes, 0) AS INTEGER) AS nodes,
    CAST(coalesce(cap.unknown_capacity_nodes, 0) AS INTEGER) AS unknown_capacity_nodes,
    CAST(coalesce(u.node_samples, 0) AS INTEGER) AS node_samples,
    round(100.0 * coalesce(u.node_samples, 0) / nullif(288 * (cap.nodes - cap.unknown_capacity_nodes), 0), 3)
        AS coverage_pct,
    cap.capacity_vcpu,
    cap.capacity_mem_gib,
    r.requested_cpu_pct,
    r.requested_cpu_pct / 100.0 * cap.capacity_vcpu AS requested_vcpu,
    r.requested_mem_pct,
    r.requested_mem_pct / 100.0 * cap.capacity_mem_gib AS requested_mem_gib,
    CAST(coalesce(r.requested_samples, 0) AS INTEGER) AS requested_samples,
    u.used_cpu_mean_pct,
    u.used_cpu_p95_pct,
    u.used_cpu_max_pct,
    u.used_cpu_mean_pct / 100.0 * cap.capacity_vcpu AS used_vcpu_mean,
    u.used_cpu_p95_pct / 100.0 * cap.capacity_vcpu AS used_vcpu_p95,
    m.used_mem_mean_pct,
    m.used_mem_p95_pct,
    m.used_mem_max_pct,
    m.used_mem_mean_pct / 100.0 * cap.capacity_mem_gib AS used_mem_gib_mean,
    m.used_mem_p95_pct / 100.0 * cap.capacity_mem_gib AS used_mem_gib_p95,
    r.reported_cpu_pct,
    r.reported_mem_pct
FROM clusters AS cl
LEFT JOIN capacity AS cap USING (cluster_id)
LEFT JOIN used AS u USING (cluster_id)
LEFT JOIN mem_used AS m USING (cluster_id)
LEFT JOIN requested AS r USING (cluster_id)
ORDER BY cl.cluster_id
