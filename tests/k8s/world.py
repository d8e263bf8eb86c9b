"""The test clusters: Kubernetes objects in their wire shape and the Prometheus history that goes with them.

Two clusters share one real Prometheus (each with its own ``cluster`` label, as behind Thanos or Mimir):

- ``prod-eks`` (account 123456789012): three nodes (an EKS managed node group and a Karpenter spot node
  with a taint), namespaces ``shop``, ``batch``, ``kube-system``; Deployment ``web`` (3 pods, two
  containers, an older ReplicaSet's pod seen only in Prometheus), its HPA (autoscaling/v2), PDB and VPA;
  StatefulSet ``db`` (one pod OOM-killed twice); DaemonSet ``aws-node``; CronJob ``report`` whose
  yesterday's Job is gone from the API (known only through ``kube_job_owner``); two Dagster run Jobs
  grouped by their ``dagster/job`` label, and a third run gone from the API that only kube-state-metrics'
  ``kube_pod_labels`` groups; a bare pod.
- ``bulk`` (account 210987654321): 70 single-container pods in 7 Deployments of namespace ``apps``,
  more than one batch of the series limit the tests configure.

Usage is replayed from real traces (``tests/data``): CPU from Azure V1 VMs (``avg_cpu_pct`` x the
container's CPU limit), memory working set from Google cluster-data 2011 (``mem_util_pct`` x the
memory limit), at 5-minute spacing over two days. The same few traces are reused by many pods.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

DATA = Path(__file__).resolve().parent.parent / "data"
AZURE_SAMPLE = DATA / "azure_v1_6vms_3days_cpu_5min.csv.gz"
GCD_SAMPLE = DATA / "gcd_4vms_1day_cpu_mem_5min.csv.gz"

FIRST_DAY = date(2026, 11, 16)  # the demo days: the demo fleet and these clusters share accounts
DAYS = [FIRST_DAY, FIRST_DAY + timedelta(days=1)]
STEP_S = 300
PROD_ACCOUNT = "123456789012"
BULK_ACCOUNT = "210987654321"
MIB = 1024 * 1024


def meta(
    name: str,
    namespace: str | None = None,
    labels: dict[str, str] | None = None,
    owner: tuple[str, str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "labels": labels or {}}
    if namespace:
        out["namespace"] = namespace
    if owner:
        api_version, kind, owner_name = owner
        out["ownerReferences"] = [
            {
                "apiVersion": api_version,
                "kind": kind,
                "name": owner_name,
                "uid": f"uid-{kind}-{owner_name}",
                "controller": True,
            }
        ]
    out.update(extra)
    return out


def container(
    name: str, cpu_req: str, mem_req: str, cpu_lim: str | None = None, mem_lim: str | None = None
) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": cpu_req, "memory": mem_req}}
    limits = {k: v for k, v in (("cpu", cpu_lim), ("memory", mem_lim)) if v}
    if limits:
        resources["limits"] = limits
    return {"name": name, "image": f"registry.example/{name}:1.0", "resources": resources}


def node(
    name: str, instance_type: str, zone: str, labels: dict[str, str], instance_id: str, taints: list[dict] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": meta(
            name,
            labels={
                "kubernetes.io/hostname": name,
                "node.kubernetes.io/instance-type": instance_type,
                "topology.kubernetes.io/zone": zone,
                "topology.kubernetes.io/region": zone[:-1],
                "kubernetes.io/arch": "amd64",
                **labels,
            },
        ),
        "spec": {"providerID": f"aws:///{zone}/{instance_id}", "taints": taints or []},
        "status": {
            "capacity": {"cpu": "4", "memory": "16110260Ki", "pods": "58"},
            "allocatable": {"cpu": "3920m", "memory": "15092404Ki", "pods": "58"},
            "conditions": [{"type": "Ready", "status": "True"}],
            "nodeInfo": {
                "kubeletVersion": "v1.30.4-eks-a737599",
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": "Amazon Linux 2023",
                "kernelVersion": "6.1.0",
                "containerRuntimeVersion": "containerd://1.7.20",
                "kubeProxyVersion": "v1.30.4",
                "machineID": "m",
                "systemUUID": "s",
                "bootID": "b",
            },
        },
    }


def pod(
    name: str,
    namespace: str,
    node_name: str,
    containers: list[dict],
    owner: tuple[str, str, str] | None,
    labels: dict[str, str] | None = None,
    qos: str = "Burstable",
    restarts: dict[str, int] | None = None,
    oom: set[str] | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    statuses = []
    for c in containers:
        status: dict[str, Any] = {
            "name": c["name"],
            "ready": phase == "Running",
            "restartCount": (restarts or {}).get(c["name"], 0),
            "image": c["image"],
            "imageID": "",
            "state": {"running": {"startedAt": "2026-11-16T00:00:00Z"}},
        }
        if c["name"] in (oom or set()):
            status["lastState"] = {
                "terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-11-17T08:20:00Z"}
            }
        statuses.append(status)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta(name, namespace, labels, owner),
        "spec": {"nodeName": node_name, "containers": containers},
        "status": {"phase": phase, "qosClass": qos, "containerStatuses": statuses},
    }


@dataclass
class PodSeries:
    """One running container's history: which traces it replays and when it lived (steps from FIRST_DAY)."""

    cluster: str
    namespace: str
    pod: str
    container: str
    node: str
    cpu_limit_cores: float
    mem_limit_bytes: float
    cpu_trace: int
    mem_trace: int
    start_step: int = 0
    end_step: int = 2 * 288
    restarts_at: list[int] = field(default_factory=list)  # steps of an OOM kill and restart


@dataclass
class Cluster:
    name: str
    account_id: str
    objects: list[dict[str, Any]]
    series: list[PodSeries]
    pod_owners: dict[tuple[str, str], tuple[str, str]]  # (ns, pod) -> (owner_kind, owner_name), kube_pod_owner
    replicaset_owners: dict[tuple[str, str], tuple[str, str]]  # (ns, rs) -> owner, kube_replicaset_owner
    job_owners: dict[tuple[str, str], tuple[str, str]]  # (ns, job) -> owner, kube_job_owner
    pod_labels: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # kube_pod_labels
    days: int = len(DAYS)  # days of history from FIRST_DAY


def over_days(cluster: Cluster, days: int) -> Cluster:
    """The cluster with its long-running containers (those alive for the whole of ``DAYS``) living ``days``
    days from FIRST_DAY; their traces repeat (the CPU sample's two days, the memory sample's one). The
    first ``len(DAYS)`` days are exactly those of ``cluster``; short-lived pods and Job runs stay where they were."""
    if days < len(DAYS):
        raise ValueError(f"over_days needs at least {len(DAYS)} days, got {days}")
    full = len(DAYS) * 288
    series = [replace(s, end_step=days * 288) if s.end_step == full else s for s in cluster.series]
    return replace(cluster, series=series, days=days)


def prod_cluster() -> Cluster:
    name = "prod-eks"
    objs: list[dict[str, Any]] = []
    series: list[PodSeries] = []
    pod_owners: dict[tuple[str, str], tuple[str, str]] = {}
    nodes = [
        node(
            "ip-10-0-1-10.ec2.internal",
            "m5.xlarge",
            "us-east-1a",
            {"eks.amazonaws.com/nodegroup": "general", "eks.amazonaws.com/capacityType": "ON_DEMAND"},
            "i-0a1b2c3d4e5f60001",
        ),
        node(
            "ip-10-0-2-20.ec2.internal",
            "m5.xlarge",
            "us-east-1b",
            {"eks.amazonaws.com/nodegroup": "general", "eks.amazonaws.com/capacityType": "ON_DEMAND"},
            "i-0a1b2c3d4e5f60002",
        ),
        node(
            "ip-10-0-3-30.ec2.internal",
            "c6g.xlarge",
            "us-east-1c",
            {"karpenter.sh/nodepool": "spot-arm", "karpenter.sh/capacity-type": "spot"},
            "i-0a1b2c3d4e5f60003",
            taints=[{"key": "spot", "value": "true", "effect": "NoSchedule"}],
        ),
    ]
    objs += nodes
    node_names = [n["metadata"]["name"] for n in nodes]
    for ns in ("shop", "batch", "kube-system"):
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": meta(ns, labels={"kubernetes.io/metadata.name": ns}),
                "status": {"phase": "Active"},
            }
        )

    web_containers = [
        container("app", "500m", "512Mi", "1", "1Gi"),
        container("istio-proxy", "100m", "128Mi", "200m", "256Mi"),
    ]
    template = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": web_containers}}
    objs.append(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta("web", "shop", {"app": "web"}),
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template},
            "status": {"replicas": 3, "readyReplicas": 3, "availableReplicas": 3},
        }
    )
    objs.append(
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": meta("web-5d8f7c9b4", "shop", {"app": "web"}, ("apps/v1", "Deployment", "web")),
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template},
            "status": {"replicas": 3},
        }
    )
    for i, suffix in enumerate(("x7k2p", "m3n8q", "z9w4r")):
        p = f"web-5d8f7c9b4-{suffix}"
        objs.append(
            pod(
                p, "shop", node_names[i % 2], web_containers, ("apps/v1", "ReplicaSet", "web-5d8f7c9b4"), {"app": "web"}
            )
        )
        pod_owners[("shop", p)] = ("ReplicaSet", "web-5d8f7c9b4")
        series.append(
            PodSeries(name, "shop", p, "app", node_names[i % 2], 1.0, 1024 * MIB, i, i, start_step=60 if i == 2 else 0)
        )
        series.append(
            PodSeries(
                name,
                "shop",
                p,
                "istio-proxy",
                node_names[i % 2],
                0.2,
                256 * MIB,
                3 + i,
                0,
                start_step=60 if i == 2 else 0,
            )
        )
    # the previous ReplicaSet's pod ran the first hours of the first day; the API no longer has either
    old = "web-6c9d8b7f5-q2w3e"
    pod_owners[("shop", old)] = ("ReplicaSet", "web-6c9d8b7f5")
    series.append(PodSeries(name, "shop", old, "app", node_names[0], 1.0, 1024 * MIB, 4, 1, end_step=72))
    series.append(PodSeries(name, "shop", old, "istio-proxy", node_names[0], 0.2, 256 * MIB, 5, 0, end_step=72))
    objs.append(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": meta("web", "shop"),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 2,
                "maxReplicas": 10,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                    }
                ],
            },
            "status": {"currentReplicas": 3, "desiredReplicas": 3, "currentMetrics": []},
        }
    )
    objs.append(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": meta("web", "shop"),
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"currentHealthy": 3, "desiredHealthy": 2, "disruptionsAllowed": 1, "expectedPods": 3},
        }
    )
    objs.append(
        {
            "apiVersion": "autoscaling.k8s.io/v1",
            "kind": "VerticalPodAutoscaler",
            "metadata": meta("web", "shop"),
            "spec": {
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "updatePolicy": {"updateMode": "Off"},
            },
            "status": {
                "recommendation": {
                    "containerRecommendations": [{"containerName": "app", "target": {"cpu": "250m", "memory": "400Mi"}}]
                }
            },
        }
    )

    db_containers = [container("postgres", "1", "2Gi", "2", "2Gi")]
    objs.append(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": meta("db", "shop", {"app": "db"}),
            "spec": {
                "replicas": 1,
                "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": db_containers}},
            },
            "status": {"replicas": 1, "readyReplicas": 1},
        }
    )
    objs.append(
        pod(
            "db-0",
            "shop",
            node_names[1],
            db_containers,
            ("apps/v1", "StatefulSet", "db"),
            {"app": "db"},
            restarts={"postgres": 2},
            oom={"postgres"},
        )
    )
    pod_owners[("shop", "db-0")] = ("StatefulSet", "db")
    series.append(
        PodSeries(name, "shop", "db-0", "postgres", node_names[1], 2.0, 2048 * MIB, 0, 3, restarts_at=[100, 388])
    )

    ds_containers = [container("aws-node", "25m", "64Mi")]
    objs.append(
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": meta("aws-node", "kube-system", {"k8s-app": "aws-node"}),
            "spec": {
                "selector": {"matchLabels": {"k8s-app": "aws-node"}},
                "template": {"metadata": {"labels": {"k8s-app": "aws-node"}}, "spec": {"containers": ds_containers}},
            },
            "status": {
                "desiredNumberScheduled": 3,
                "numberReady": 3,
                "currentNumberScheduled": 3,
                "numberMisscheduled": 0,
            },
        }
    )
    for i, n in enumerate(node_names):
        p = f"aws-node-{'abc'[i]}{i}x9z"
        objs.append(
            pod(p, "kube-system", n, ds_containers, ("apps/v1", "DaemonSet", "aws-node"), {"k8s-app": "aws-node"})
        )
        pod_owners[("kube-system", p)] = ("DaemonSet", "aws-node")
        series.append(PodSeries(name, "kube-system", p, "aws-node", n, 0.1, 128 * MIB, i, i))

    report_containers = [container("report", "250m", "256Mi", "500m", "512Mi")]
    objs.append(
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": meta("report", "batch"),
            "spec": {
                "schedule": "0 * * * *",
                "jobTemplate": {
                    "spec": {"template": {"spec": {"containers": report_containers, "restartPolicy": "Never"}}}
                },
            },
            "status": {},
        }
    )
    job_owners: dict[tuple[str, str], tuple[str, str]] = {}
    live_job = "report-28494780"
    objs.append(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": meta(live_job, "batch", {"job-name": live_job}, ("batch/v1", "CronJob", "report")),
            "spec": {"template": {"spec": {"containers": report_containers, "restartPolicy": "Never"}}},
            "status": {"succeeded": 1},
        }
    )
    objs.append(
        pod(
            f"{live_job}-h4k9s",
            "batch",
            node_names[2],
            report_containers,
            ("batch/v1", "Job", live_job),
            {"job-name": live_job},
            phase="Succeeded",
        )
    )
    gone_job = "report-28493340"
    for job, step in ((gone_job, 12), (live_job, 300)):
        p = f"{job}-h4k9s" if job == live_job else f"{job}-r8t2v"
        job_owners[("batch", job)] = ("CronJob", "report")
        pod_owners[("batch", p)] = ("Job", job)
        series.append(
            PodSeries(
                name, "batch", p, "report", node_names[2], 0.5, 512 * MIB, 2, 2, start_step=step, end_step=step + 6
            )
        )
    run_containers = [container("dagster", "1", "1Gi", "2", "2Gi")]
    for k, run in enumerate(("dagster-run-3f2a9c1e", "dagster-run-8b7d6e5f")):
        labels = {"dagster/job": "daily_pipeline", "job-name": run}
        objs.append(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": meta(run, "batch", labels),
                "spec": {
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": run_containers, "restartPolicy": "Never"},
                    }
                },
                "status": {"succeeded": 1},
            }
        )
        p = f"{run}-5xq2m"
        objs.append(pod(p, "batch", node_names[2], run_containers, ("batch/v1", "Job", run), labels, phase="Succeeded"))
        pod_owners[("batch", p)] = ("Job", run)
        job_owners[("batch", run)] = ("<none>", "<none>")
        series.append(
            PodSeries(
                name,
                "batch",
                p,
                "dagster",
                node_names[2],
                2.0,
                2048 * MIB,
                5,
                1,
                start_step=48 + 288 * k,
                end_step=60 + 288 * k,
            )
        )

    # a Dagster run whose Job and pod are gone from the API: only kube-state-metrics' pod labels group it
    gone_run = "dagster-run-0a1b2c3d"
    gone_pod = f"{gone_run}-k2j4h"
    pod_owners[("batch", gone_pod)] = ("Job", gone_run)
    job_owners[("batch", gone_run)] = ("<none>", "<none>")
    series.append(
        PodSeries(
            name, "batch", gone_pod, "dagster", node_names[2], 2.0, 2048 * MIB, 4, 2, start_step=200, end_step=210
        )
    )
    pod_labels = {
        ("batch", p): {"label_dagster_job": "daily_pipeline"}
        for p in ("dagster-run-3f2a9c1e-5xq2m", "dagster-run-8b7d6e5f-5xq2m", gone_pod)
    }

    debug = [container("shell", "10m", "32Mi")]
    objs.append(pod("debug-shell", "shop", node_names[0], debug, None, qos="Burstable"))
    pod_owners[("shop", "debug-shell")] = ("<none>", "<none>")
    series.append(PodSeries(name, "shop", "debug-shell", "shell", node_names[0], 0.05, 64 * MIB, 1, 0))
    return Cluster(
        name,
        PROD_ACCOUNT,
        objs,
        series,
        pod_owners,
        {("shop", "web-5d8f7c9b4"): ("Deployment", "web"), ("shop", "web-6c9d8b7f5"): ("Deployment", "web")},
        job_owners,
        pod_labels,
    )


BULK_DEPLOYMENTS = 7
BULK_PODS_PER_DEPLOYMENT = 10


def bulk_cluster() -> Cluster:
    name = "bulk"
    nodes = [
        node(
            f"ip-10-9-0-{i}.ec2.internal",
            "m5.2xlarge",
            "us-east-1a",
            {"eks.amazonaws.com/nodegroup": "bulk"},
            f"i-0b00000000000000{i}",
        )
        for i in range(4)
    ]
    objs: list[dict[str, Any]] = [
        *nodes,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": meta("apps"), "status": {"phase": "Active"}},
    ]
    series: list[PodSeries] = []
    pod_owners: dict[tuple[str, str], tuple[str, str]] = {}
    rs_owners: dict[tuple[str, str], tuple[str, str]] = {}
    for d in range(BULK_DEPLOYMENTS):
        dep = f"svc{d}"
        rs = f"{dep}-7f8e9d{d}c"
        cs = [container("main", "200m", "256Mi", "500m", "512Mi")]
        template = {"metadata": {"labels": {"app": dep}}, "spec": {"containers": cs}}
        objs.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": meta(dep, "apps", {"app": dep}),
                "spec": {
                    "replicas": BULK_PODS_PER_DEPLOYMENT,
                    "selector": {"matchLabels": {"app": dep}},
                    "template": template,
                },
                "status": {"replicas": BULK_PODS_PER_DEPLOYMENT},
            }
        )
        objs.append(
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": meta(rs, "apps", {"app": dep}, ("apps/v1", "Deployment", dep)),
                "spec": {
                    "replicas": BULK_PODS_PER_DEPLOYMENT,
                    "selector": {"matchLabels": {"app": dep}},
                    "template": template,
                },
                "status": {"replicas": BULK_PODS_PER_DEPLOYMENT},
            }
        )
        rs_owners[("apps", rs)] = ("Deployment", dep)
        for k in range(BULK_PODS_PER_DEPLOYMENT):
            p = f"{rs}-p{k:02d}q"
            n = nodes[k % 4]["metadata"]["name"]
            objs.append(pod(p, "apps", n, cs, ("apps/v1", "ReplicaSet", rs), {"app": dep}))
            pod_owners[("apps", p)] = ("ReplicaSet", rs)
            series.append(PodSeries(name, "apps", p, "main", n, 0.5, 512 * MIB, (d + k) % 6, k % 3))
    return Cluster(name, BULK_ACCOUNT, objs, series, pod_owners, rs_owners, {})


def _traces() -> tuple[list[list[float]], list[list[float]]]:
    azure = pd.read_csv(AZURE_SAMPLE).sort_values(["vm_id", "step_5min"])
    gcd = pd.read_csv(GCD_SAMPLE).sort_values(["vm_id", "step_5min"])
    cpu = [g["avg_cpu_pct"].tolist()[: 2 * 288] for _, g in azure.groupby("vm_id", sort=True)]
    # one real day of memory, repeated for the second day (the sample has one day)
    mem = [g["mem_util_pct"].tolist() * 2 for _, g in gcd.groupby("vm_id", sort=True)]
    return cpu, mem


def openmetrics(clusters: list[Cluster]) -> Iterator[str]:
    """The clusters' history as OpenMetrics text for ``promtool tsdb create-blocks-from openmetrics``."""
    cpu, mem = _traces()
    days = max((c.days for c in clusters), default=len(DAYS))
    t0 = datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=UTC).timestamp()

    def labels(s: PodSeries, container_name: str | None = None, **extra: str) -> str:
        base = {
            "cluster": s.cluster,
            "namespace": s.namespace,
            "pod": s.pod,
            "container": s.container if container_name is None else container_name,
            "node": s.node,
            **extra,
        }
        return ",".join(f'{k}="{v}"' for k, v in base.items())

    all_series = [s for c in clusters for s in c.series]

    def family(metric: str, kind: str) -> Iterator[str]:
        yield f"# TYPE {metric} {kind}\n"

    def line(metric: str, lbl: dict[str, str] | str, value: float, step: int) -> str:
        text = lbl if isinstance(lbl, str) else ",".join(f'{k}="{v}"' for k, v in lbl.items())
        return f"{metric}{{{text}}} {value:.6f} {t0 + step * STEP_S:.0f}\n"

    def ksm(s: PodSeries, **extra: str) -> dict[str, str]:
        return {"cluster": s.cluster, "namespace": s.namespace, "pod": s.pod, "container": s.container, **extra}

    def pod_level(s: PodSeries) -> tuple[str | None, ...]:
        # cAdvisor also exports pod-level series (container "" and the pause container "POD")
        return (None, "", "POD") if s.container == _first_container(all_series, s) else (None,)

    yield from family("container_cpu_usage_seconds", "counter")
    for s in all_series:
        for override in pod_level(s):
            total = 0.0
            for step in range(s.start_step, s.end_step):
                total += cpu[s.cpu_trace][step % len(cpu[s.cpu_trace])] / 100.0 * s.cpu_limit_cores * STEP_S
                value = total * (5.0 if override == "" else 1e-3 if override == "POD" else 1.0)
                yield line("container_cpu_usage_seconds_total", labels(s, override), value, step)
    yield from family("container_cpu_cfs_periods", "counter")
    for s in all_series:
        for step in range(s.start_step, s.end_step):
            yield line("container_cpu_cfs_periods_total", labels(s), (step - s.start_step + 1) * 3000, step)
    yield from family("container_cpu_cfs_throttled_periods", "counter")
    for s in all_series:
        throttled = 0
        for step in range(s.start_step, s.end_step):
            throttled += int(3000 * max(0.0, cpu[s.cpu_trace][step % len(cpu[s.cpu_trace])] / 100.0 - 0.5))
            yield line("container_cpu_cfs_throttled_periods_total", labels(s), throttled, step)
    yield from family("container_memory_working_set_bytes", "gauge")
    for s in all_series:
        for override in pod_level(s)[:2]:
            for step in range(s.start_step, s.end_step):
                value = round(mem[s.mem_trace][step % len(mem[s.mem_trace])] / 100.0 * s.mem_limit_bytes) * (
                    3 if override == "" else 1
                )
                yield line("container_memory_working_set_bytes", labels(s, override), value, step)
    yield from family("kube_pod_container_status_restarts", "counter")
    for s in all_series:
        for step in range(s.start_step, s.end_step):
            restarts = sum(1 for r in s.restarts_at if r <= step)
            yield line("kube_pod_container_status_restarts_total", ksm(s), restarts, step)
    yield from family("kube_pod_container_status_last_terminated_reason", "gauge")
    for s in all_series:
        for step in range(s.restarts_at[0] if s.restarts_at else s.end_step, s.end_step):
            yield line("kube_pod_container_status_last_terminated_reason", ksm(s, reason="OOMKilled"), 1, step)
    yield from family("kube_pod_owner", "gauge")
    for c in clusters:
        for (ns, p), (kind, owner) in sorted(c.pod_owners.items()):
            lived = [s for s in c.series if (s.namespace, s.pod) == (ns, p)]
            lbl = {"cluster": c.name, "namespace": ns, "pod": p, "owner_kind": kind, "owner_name": owner}
            for step in range(min(s.start_step for s in lived), max(s.end_step for s in lived)):
                yield line("kube_pod_owner", {**lbl, "owner_is_controller": "true"}, 1, step)
    yield from family("kube_replicaset_owner", "gauge")
    for c in clusters:
        for (ns, rs), (kind, owner) in sorted(c.replicaset_owners.items()):
            lbl = {"cluster": c.name, "namespace": ns, "replicaset": rs, "owner_kind": kind, "owner_name": owner}
            for step in range(0, days * 288):
                yield line("kube_replicaset_owner", lbl, 1, step)
    yield from family("kube_pod_labels", "gauge")
    for c in clusters:
        for (ns, p), extra in sorted(c.pod_labels.items()):
            lived = [s for s in c.series if (s.namespace, s.pod) == (ns, p)]
            lbl = {"cluster": c.name, "namespace": ns, "pod": p, **extra}
            for step in range(min(s.start_step for s in lived), max(s.end_step for s in lived)):
                yield line("kube_pod_labels", lbl, 1, step)
    yield from family("kube_job_owner", "gauge")
    for c in clusters:
        for (ns, job), (kind, owner) in sorted(c.job_owners.items()):
            lived = [s for s in c.series if s.namespace == ns and s.pod.startswith(job)]
            lbl = {"cluster": c.name, "namespace": ns, "job_name": job, "owner_kind": kind, "owner_name": owner}
            for step in range(min(s.start_step for s in lived), max(s.end_step for s in lived) + 12):
                yield line("kube_job_owner", lbl, 1, step)
    yield "# EOF\n"


def _first_container(all_series: list[PodSeries], s: PodSeries) -> str:
    return next(x.container for x in all_series if (x.cluster, x.namespace, x.pod) == (s.cluster, s.namespace, s.pod))


def write_openmetrics(clusters: list[Cluster], path: Path) -> Path:
    with gzip.open(path, "wt") if path.suffix == ".gz" else path.open("w") as out:
        out.writelines(openmetrics(clusters))
    return path
