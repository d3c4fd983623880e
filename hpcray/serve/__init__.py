"""hpcray.serve: Ray Serve's API with replicas on the job's ranks and HTTP on the head rank."""

from .api import (
    ApplicationStatusOverview,
    DeploymentStatusOverview,
    ServeStatus,
    delete,
    get_app_handle,
    get_deployment_handle,
    http_port,
    http_token,
    run,
    shutdown,
    start,
    status,
)
from .batching import batch
from .config import AutoscalingConfig, DeploymentConfig, HTTPOptions
from .deployment import Application, Deployment, deployment
from .handle import DeploymentHandle, DeploymentResponse, DeploymentUnavailableError
from .ingress import ingress
from .replica import ReplicaContext, get_replica_context
from .router import BackPressureError

__all__ = [
    "Application",
    "ApplicationStatusOverview",
    "AutoscalingConfig",
    "BackPressureError",
    "Deployment",
    "DeploymentConfig",
    "DeploymentHandle",
    "DeploymentResponse",
    "DeploymentStatusOverview",
    "DeploymentUnavailableError",
    "HTTPOptions",
    "ReplicaContext",
    "ServeStatus",
    "batch",
    "delete",
    "deployment",
    "get_app_handle",
    "get_deployment_handle",
    "get_replica_context",
    "http_port",
    "http_token",
    "ingress",
    "run",
    "shutdown",
    "start",
    "status",
]
