# The code location image of cloudopt_pipelines: the Dagster Helm chart runs it as the user-code
# deployment (a gRPC code server), and the K8sRunLauncher and k8s_job_executor start runs and steps
# from it. Built from the wheel, which carries the SQL models and the constraints file (docs/deploy.md).
#   docker build -t cloudopt-pipelines:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-deps --no-cache-dir -w /dist .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    CLOUDOPT_HOME=/opt/dagster/cloudopt \
    CLOUDOPT_RUN_EXECUTOR=k8s_job
COPY --from=build /dist/ /dist/
# dagster-k8s without its dependencies, as `make install-dev` installs it for the tests: it declares
# kubernetes<37, and the image keeps the newest client the wheel resolved (the executor's Kubernetes
# target works with 36 and 37; pyproject.toml, k8s extra).
RUN pip install --no-cache-dir /dist/cloudopt_pipelines-*.whl \
    && pip install --no-cache-dir --no-deps "dagster-k8s>=0.29,<0.30" \
    && rm -rf /dist \
    && useradd --create-home --uid 10001 cloudopt \
    && mkdir -p "$DAGSTER_HOME" "$CLOUDOPT_HOME" \
    && chown cloudopt "$DAGSTER_HOME" "$CLOUDOPT_HOME"
USER 10001
WORKDIR /opt/dagster
EXPOSE 3030
# The chart passes its own dagsterApiGrpcArgs; this default serves the same location for a plain run.
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-m", "cloudopt_pipelines.definitions", "--location-name", "cloudopt_pipelines"]
