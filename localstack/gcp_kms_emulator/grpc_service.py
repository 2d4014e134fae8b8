"""gRPC transport: one generic handler whose methods (de)serialize with the proto-plus types of kms_v1."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from .auth import check_bearer
from .errors import KmsError
from .methods import RPCS, SERVICE, Rpc
from .models import KmsBackend

log = logging.getLogger(__name__)


def _behaviour(backend: KmsBackend, rpc: Rpc, token: str | None) -> Callable[[Any, grpc.ServicerContext], Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            metadata = dict(context.invocation_metadata())
            check_bearer(token, metadata.get("authorization"))
            return backend.call(rpc.method, request)
        except KmsError as e:
            context.abort(getattr(grpc.StatusCode, e.status), e.message)
        except Exception:  # noqa: BLE001 - a bug must surface as INTERNAL, not kill the worker
            log.exception("internal error in %s", rpc.name)
            context.abort(grpc.StatusCode.INTERNAL, "Internal error in the emulator.")

    return handle


def make_handler(backend: KmsBackend, token: str | None = None) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, {
        rpc.name: grpc.unary_unary_rpc_method_handler(
            _behaviour(backend, rpc, token), request_deserializer=rpc.request.deserialize,
            response_serializer=rpc.response.serialize)
        for rpc in RPCS.values()
    })


def make_server(backend: KmsBackend, host: str, port: int, token: str | None = None) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((make_handler(backend, token),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"gRPC could not bind {host}:{port}")
    return server
