"""OpenAI-style error responses: ``{"error": {"message", "type", "param", "code"}}`` for every failure.

Handlers are installed for FastAPI's validation errors (a malformed body or a
bad field becomes a 400 naming the field, never FastAPI's default 422 shape),
for HTTP errors raised by routing (404/405), for :class:`APIError` raised by
the endpoints, and for anything else, which becomes a 500 whose body is one
line without a traceback (the traceback goes to the server's log only).
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmkit.serve.protocol import ErrorInfo, ErrorResponse

log = logging.getLogger("llmkit.serve")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}


class APIError(Exception):
    """An error the client gets as an OpenAI error object with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict:
        info = ErrorInfo(message=self.message, type=_TYPES.get(self.status, "server_error"), param=self.param,
                         code=self.code)
        return ErrorResponse(error=info).model_dump()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    # a union's failed alternatives append their type names to the path: keep the field's own part
    param = ".".join(p for p in loc if not p[:1].isupper() and "[" not in p) or None
    if first.get("type") == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {first.get('msg')}", None, "invalid_json").response()
    message = first.get("msg", "invalid value")
    return APIError(400, f"{param}: {message}" if param else message, param, "invalid_value").response()


def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return APIError(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)).response()


def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return exc.response()


def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error")
    return APIError(500, f"internal error ({type(exc).__name__})").response()


def install(app: FastAPI) -> None:
    """Route every error of ``app`` through the OpenAI error shape."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(Exception, _unexpected)
