"""Errors in OpenAI's shape, for every failure a client can see:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "voice", "code": "voice_not_found"}}

Client mistakes are 4xx (FastAPI's 422 validation errors become 400, as OpenAI answers them); anything
unexpected is a 500 whose message says only that and gives the request id: the trace goes to the log,
never into a response.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("faster_chatterbox.server")
# the Chatterbox controls of a request: an engine error message that starts with one names it
EXTRAS = ("exaggeration", "cfg_weight", "temperature", "top_p", "min_p", "repetition_penalty", "seed",
          "optimize_quality", "max_new_tokens", "num_steps", "cfg_scale")

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
          404: "invalid_request_error", 405: "invalid_request_error", 409: "invalid_request_error",
          413: "invalid_request_error", 415: "invalid_request_error", 429: "rate_limit_exceeded",
          503: "server_error", 504: "timeout"}


class APIError(Exception):
    """A request that is answered with `status` and an OpenAI-shaped error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def _validation_error(exc: RequestValidationError) -> APIError:
    """The first problem of a failed validation, named as OpenAI names them (param: the field)."""
    errors = exc.errors()
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    if first.get("type") == "json_invalid":
        return bad_request(f"the body is not valid JSON: {first.get('ctx', {}).get('error', 'decode error')}",
                           code="invalid_json")
    param = ".".join(p for p in loc if not p.isdigit()) or None
    kind = first.get("type", "")
    if kind == "missing":
        return bad_request(f"missing required parameter: {param}", param, code="missing_required_parameter")
    if kind == "extra_forbidden":
        return bad_request(f"unrecognized request argument supplied: {param}", param, code="unknown_parameter")
    message = first.get("msg", "invalid value")
    if kind in ("model_attributes_type", "dict_type") and not param:
        message = "the body must be a JSON object"
    return bad_request(f"{param}: {message}" if param else message, param)


def job_error(exc: BaseException) -> APIError:
    """The answer to what a job raised: the engine's ValueError/TypeError name a bad argument (400)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, (ValueError, TypeError)):
        message = str(exc)
        param = next((name for name in EXTRAS if message.startswith(name)), None)
        code = "no_speech" if type(exc).__name__ == "NoSpeechError" else "invalid_value"
        return bad_request(message, param, code)
    log.error("speech job failed", exc_info=exc)
    return APIError(500, "the synthesis failed (see the server log)", code="synthesis_failed")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError):
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code)
        return APIError(exc.status_code, message, code=code, headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        request_id = request.scope.get("state", {}).get("request_id", "?")
        log.error("request %s failed", request_id, exc_info=exc)
        return APIError(500, f"internal server error (request {request_id})", code="internal_error").response()
