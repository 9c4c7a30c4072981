"""Bearer API keys: when the server has one, every /v1 route (and /metrics) wants
`Authorization: Bearer KEY`, compared in constant time; a missing or wrong key is a 401 in OpenAI's shape."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .errors import APIError

_bearer = HTTPBearer(auto_error=False, description="the server's API key (--api-key), when it has one")


async def require_api_key(request: Request,
                          credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    expected: str | None = request.app.state.options.api_key
    if not expected:
        return
    if credentials is None:
        raise APIError(401, "missing API key: send it as 'Authorization: Bearer KEY'", code="missing_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise APIError(401, "incorrect API key provided", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
