"""Stand-ins for the tests and the demo, never for production: a Kubernetes API server (no kube-apiserver
can be installed where the tests run) and a Prometheus that replays recorded responses."""
