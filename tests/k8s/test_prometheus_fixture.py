"""The real Prometheus holds the backfilled history of the real traces."""

import json
import urllib.parse
import urllib.request
from datetime import UTC, datetime

from tests.k8s.conftest import Prometheus
from tests.k8s.world import FIRST_DAY, MIB, _traces


def test_backfilled_memory_reads_back_exactly(prometheus: Prometheus) -> None:
    _cpu, mem = _traces()
    t = datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=UTC).timestamp() + 100 * 300
    q = 'container_memory_working_set_bytes{cluster="prod-eks",pod="db-0",container="postgres"}'
    url = f"{prometheus.url}/api/v1/query?" + urllib.parse.urlencode({"query": q, "time": t})
    with urllib.request.urlopen(url) as r:
        result = json.load(r)["data"]["result"]
    assert len(result) == 1
    assert float(result[0]["value"][1]) == round(mem[3][100] / 100 * 2048 * MIB)
