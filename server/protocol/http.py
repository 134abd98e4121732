"""KServe v2 / Triton HTTP routes on FastAPI. Handlers read the raw body (tritonclient sends no
Content-Type), call the DataPlane once, and answer with Triton's status codes and
`{"error": "..."}` bodies. A malformed body is the client's fault: 400, not Triton's 500.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from server.byte_budget import LeasePool
from server.dataplane import DataPlane
from server.errors import ErrorKind, ServingError, invalid
from server.protocol.http_access import HttpAccess
from server.protocol.http_infer import InferDecoder, InferFastPath, decode_body, read_raw_body
from server.protocol.http_limits import BufferBudget, HttpLimits, RequestRejected, check_json_size
from server.protocol.status import HTTP_STATUS_BY_KIND
from server.repository_format import config_to_json
from server.restrictions import RestrictedApis
from server.shared_memory import cuda_register_error, require_enabled

DriftDetail = Callable[[str, str | None], dict[str, Any] | None]
JSON = "application/json"


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type=JSON)


def error_response(
    status_code: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps({"error": message}), status_code=status_code, media_type=JSON, headers=headers
    )


async def optional_json(
    request: Request, limits: HttpLimits, budget: BufferBudget
) -> dict[str, Any]:
    """Parse an optional JSON object body (empty body: {}), decompressed, under the body and
    JSON limits and the server-wide budget."""
    reservation = budget.reservation()
    try:
        body = await read_raw_body(request.receive, request.headers, limits, reservation)
        body = await decode_body(body, request.headers.get("content-encoding"), limits, reservation)
        if not body.strip():
            return {}
        check_json_size(body, len(body), limits.decode)
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"failed to parse the request JSON buffer: {exc}") from None
    finally:
        reservation.release()
    if not isinstance(value, dict):
        raise invalid("the request body must be a JSON object")
    return value


def create_http_app(
    dataplane: DataPlane,
    limits: HttpLimits,
    drift_detail: DriftDetail | None = None,
    restricted: RestrictedApis | None = None,
    budget_pool: LeasePool | None = None,
) -> InferFastPath:
    """The HTTP application: every route Triton serves for ferry's extensions, under the HTTP
    limits, with the restricted API groups (`--http-restricted-api`) behind their headers; under
    `--workers N`, the buffered bytes leased from the workers' `budget_pool`."""
    budget = BufferBudget(limits.max_buffered_bytes, budget_pool)
    return InferFastPath(
        create_fastapi_app(dataplane, limits, budget, drift_detail),
        dataplane,
        limits,
        budget,
        InferDecoder(limits.decode),
        HttpAccess(restricted) if restricted else None,
    )


def create_fastapi_app(
    dataplane: DataPlane,
    limits: HttpLimits,
    budget: BufferBudget,
    drift_detail: DriftDetail | None = None,
) -> FastAPI:
    """Every route but POST .../infer, which the InferFastPath in front of this app serves."""
    app = FastAPI(title="ferry", docs_url=None, redoc_url=None, openapi_url=None)
    app.router.redirect_slashes = False  # as Triton: '/v2/' is a 404, not a redirect

    async def body_json(request: Request) -> dict[str, Any]:
        return await optional_json(request, limits, budget)

    async def on_serving_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServingError)
        headers = (
            {"Accept-Encoding": "gzip, deflate"}
            if exc.kind == ErrorKind.UNSUPPORTED and "Content-Encoding" in exc.message
            else None
        )
        return error_response(HTTP_STATUS_BY_KIND[exc.kind], exc.message, headers)

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, str(exc.detail))

    async def on_rejected(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestRejected)
        return error_response(exc.status, exc.message)

    app.add_exception_handler(ServingError, on_serving_error)
    app.add_exception_handler(RequestRejected, on_rejected)
    app.add_exception_handler(HTTPException, on_http_error)

    def route(
        path: str, methods: list[str]
    ) -> Callable[[Callable[[Request], Awaitable[Response]]], Any]:
        def register(endpoint: Callable[[Request], Awaitable[Response]]) -> Any:
            app.router.add_route(path, endpoint, methods=methods, include_in_schema=False)
            return endpoint

        return register

    def model_route(suffix: str, methods: list[str]) -> Callable[..., Any]:
        def register(endpoint: Callable[[Request], Awaitable[Response]]) -> Any:
            for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version:int}"):
                app.router.add_route(
                    prefix + suffix, endpoint, methods=methods, include_in_schema=False
                )
            return endpoint

        return register

    def model_and_version(request: Request) -> tuple[str, str]:
        version = request.path_params.get("version")
        return request.path_params["model"], "" if version is None else str(version)

    @route("/v2/health/live", ["GET"])
    async def health_live(_: Request) -> Response:
        return Response(status_code=200 if dataplane.live() else 400)

    @route("/v2/health/ready", ["GET"])
    async def health_ready(_: Request) -> Response:
        return Response(status_code=200 if dataplane.ready() else 400)

    @route("/v2", ["GET"])
    async def server_metadata(_: Request) -> Response:
        return json_response(dataplane.server_metadata())

    @route("/v2/models/stats", ["GET"])
    async def all_statistics(_: Request) -> Response:
        return json_response({"model_stats": await dataplane.statistics()})

    @model_route("", ["GET"])
    async def model_metadata(request: Request) -> Response:
        return json_response(dataplane.model_metadata(*model_and_version(request)))

    @model_route("/ready", ["GET"])
    async def model_ready(request: Request) -> Response:
        if dataplane.model_ready(*model_and_version(request)):
            return Response(status_code=200)
        return error_response(400, "Model version not ready")

    @model_route("/config", ["GET"])
    async def model_config(request: Request) -> Response:
        return json_response(config_to_json(dataplane.model_config(*model_and_version(request))))

    @model_route("/stats", ["GET"])
    async def model_statistics(request: Request) -> Response:
        return json_response(
            {"model_stats": await dataplane.statistics(*model_and_version(request))}
        )

    @model_route("/drift", ["GET"])
    async def model_drift(request: Request) -> Response:
        name, version = model_and_version(request)
        dataplane.repository.get(name, version)  # 404/503 for unknown or unready models
        detail = drift_detail(name, version or None) if drift_detail else None
        if detail is None:
            raise ServingError(
                ErrorKind.NOT_FOUND,
                f"model '{name}' has no drift reference (or drift monitoring is off)",
            )
        return json_response(detail)

    @route("/v2/logging", ["GET", "POST"])
    async def logging_settings(request: Request) -> Response:
        if request.method == "POST":
            changes = await body_json(request)
            return json_response(await dataplane.update_log_settings(changes))
        return json_response(dataplane.log_settings())

    @route("/v2/trace/setting", ["GET", "POST"])
    @route("/v2/models/{model}/trace/setting", ["GET", "POST"])
    async def trace_setting(request: Request) -> Response:
        model = request.path_params.get("model", "")
        if request.method == "POST":
            changes = await body_json(request)
            return json_response(await dataplane.update_trace_settings(model, changes))
        return json_response(dataplane.trace_settings(model))

    @route("/v2/repository/index", ["POST"])
    @route("/v2/repository/{repository}/index", ["POST"])
    async def repository_index(request: Request) -> Response:
        ready = (await body_json(request)).get("ready", False)
        if not isinstance(ready, bool):
            raise invalid("repository index 'ready' must be a boolean")
        return json_response(dataplane.repository_index(ready))

    @route("/v2/repository/models/{model:path}/load", ["POST"])
    async def load(request: Request) -> Response:
        body = await body_json(request)
        config, files = _load_parameters(body)
        await dataplane.load_model(request.path_params["model"], config, files)
        return Response(status_code=200)

    @route("/v2/repository/models/{model:path}/unload", ["POST"])
    async def unload(request: Request) -> Response:
        await body_json(request)
        await dataplane.unload_model(request.path_params["model"])
        return Response(status_code=200)

    @route("/v2/repository/{repository}/models/{model:path}/{action}", ["POST"])
    async def named_repository(_: Request) -> Response:
        raise ServingError(
            ErrorKind.UNSUPPORTED, "'repository_name' specification is not supported"
        )

    shared_memory = dataplane.shared_memory

    async def system_shm_status(request: Request) -> Response:
        region = request.path_params.get("region", "")
        return json_response(await dataplane.shared_memory_status(region))

    async def system_shm_register(request: Request) -> Response:
        require_enabled(shared_memory)
        key, offset, byte_size = _register_parameters(await body_json(request))
        region = request.path_params.get("region", "")
        await dataplane.register_shared_memory(region, key, offset, byte_size)
        return Response(status_code=200)

    async def system_shm_unregister(request: Request) -> Response:
        await dataplane.unregister_shared_memory(request.path_params.get("region", ""))
        return Response(status_code=200)

    async def cuda_shm_register(request: Request) -> Response:
        raise cuda_register_error(shared_memory, request.path_params.get("region", ""))

    shm_handlers = {
        "systemsharedmemory": (system_shm_status, system_shm_register, system_shm_unregister),
        "cudasharedmemory": (_cuda_shm_status, cuda_shm_register, _cuda_shm_unregister),
    }
    for kind, (status, register, unregister) in shm_handlers.items():
        for prefix in (f"/v2/{kind}", f"/v2/{kind}/region/{{region}}"):
            app.router.add_route(
                prefix + "/status", status, methods=["GET"], include_in_schema=False
            )
            app.router.add_route(
                prefix + "/register", register, methods=["POST"], include_in_schema=False
            )
            app.router.add_route(
                prefix + "/unregister", unregister, methods=["POST"], include_in_schema=False
            )
    return app


def _register_parameters(body: dict[str, Any]) -> tuple[str, int, int]:
    """key, offset and byte_size of a system shared memory register request."""
    if "key" not in body:
        raise invalid("Shared memory register request has no 'key' field")
    if "byte_size" not in body:
        raise invalid("Shared memory register request has no 'byte_size' field")
    key, offset, byte_size = body["key"], body.get("offset", 0), body["byte_size"]
    if not isinstance(key, str):
        raise invalid("Shared memory register request: 'key' must be a string")
    for label, value in (("offset", offset), ("byte_size", byte_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise invalid(
                f"Shared memory register request: '{label}' must be a non-negative integer"
            )
    return key, offset, byte_size


async def _cuda_shm_status(request: Request) -> Response:
    region = request.path_params.get("region")
    if region:  # nothing is ever registered
        return error_response(404, f"Unable to find cuda shared memory region: '{region}'")
    return json_response([])


async def _cuda_shm_unregister(_: Request) -> Response:
    return Response(status_code=200)  # nothing is ever registered


def _load_parameters(body: dict[str, Any]) -> tuple[str | None, dict[str, bytes] | None]:
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise invalid("load 'parameters' must be an object")
    config = parameters.get("config")
    if config is not None and not isinstance(config, str):
        raise invalid("load parameter 'config' must be a JSON string")
    files: dict[str, bytes] = {}
    for key, value in parameters.items():
        if key.startswith("file:"):
            try:
                files[key[len("file:") :]] = base64.b64decode(value, validate=True)
            except (ValueError, TypeError) as exc:
                raise invalid(f"load parameter '{key}' is not valid base64") from exc
    return config, files or None
