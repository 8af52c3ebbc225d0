#!/usr/bin/env python3
"""The image's HEALTHCHECK: ask the coordinator's gRPC health service on 127.0.0.1.

Exit 0 when ``grpc.health.v1.Health/Check`` (the whole server: service "") answers SERVING,
1 otherwise (NOT_SERVING while it drains, or no answer within the timeout). Plaintext unless
GRADWIRE_TLS_CERT is set; then TLS, trusting GRADWIRE_HEALTHCHECK_CA (default: the server's
own certificate, right for a self-signed one) and checking the name GRADWIRE_HEALTHCHECK_NAME
(default: localhost). The health service needs no token."""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    target = f"127.0.0.1:{os.environ.get('GRADWIRE_PORT', '50051')}"
    timeout = float(os.environ.get("GRADWIRE_HEALTHCHECK_TIMEOUT", "4"))
    cert = os.environ.get("GRADWIRE_TLS_CERT", "")
    if cert:
        with open(os.environ.get("GRADWIRE_HEALTHCHECK_CA", cert), "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        name = os.environ.get("GRADWIRE_HEALTHCHECK_NAME", "localhost")
        channel = grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", name)])
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status
        except grpc.RpcError as exc:
            print(f"gradwire-healthcheck: {target}: {exc.code().name}", file=sys.stderr)
            return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"gradwire-healthcheck: {target}: {name}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
