"""AWS access shared by the collector (read-only role) and the executor (its own write role). No Dagster.

``AwsSettings`` says how to reach AWS; ``AwsSessions`` builds the boto3 sessions and clients: the base
credentials, a role assumed per account with credentials cached and refreshed before they expire, and one
retry/timeout configuration for every client.
"""

from cloudopt_pipelines.aws.sessions import (
    DEFAULT_ROLE_SESSION_NAME,
    AwsSessionError,
    AwsSessions,
    AwsSettings,
    client_config,
    partition_of,
)

__all__ = [
    "DEFAULT_ROLE_SESSION_NAME",
    "AwsSessionError",
    "AwsSessions",
    "AwsSettings",
    "client_config",
    "partition_of",
]
