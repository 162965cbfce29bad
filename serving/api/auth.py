"""Optional bearer-token authentication, as a server interceptor wrapping every service.

A request must carry ``authorization: Bearer <token>`` matching one of the configured tokens
(compared in constant time). Health checks are exempt, so load balancers and kubelets need no
secret. With admin tokens (``admin_token_file``), the operator's experiment actions
(``ADMIN_METHODS``: SetWeight, Rollback, Promote) need one of those instead, so a client that
may classify cannot move traffic (PERMISSION_DENIED). Without any token no interceptor is
installed at all.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc

from serving.api.admission import refusal
from serving.config import ConfigError

__all__ = ["ADMIN_METHODS", "BearerTokenInterceptor", "read_tokens", "token_matches"]

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
ADMIN_METHODS = frozenset(f"/sightline.experiments.v1.Experiments/{name}"
                          for name in ("SetWeight", "Rollback", "Promote"))


def read_tokens(path: str | Path) -> list[bytes]:
    """One token per line, surrounding whitespace ignored; blank lines and comment lines (``#``
    after any indentation) are skipped. A token is printable ASCII without spaces, as gRPC
    metadata and HTTP headers carry it: any other line could never match, so it is an error."""
    tokens = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if not (token.isascii() and token.isprintable()) or " " in token or "\t" in token:
            raise ConfigError(f"token file {path}, line {number}: a token is printable ASCII "
                             "without spaces")
        tokens.append(token.encode())
    if not tokens:
        raise ConfigError(f"token file {path} holds no token")
    return tokens


def token_matches(header: str, tokens: list[bytes]) -> bool:
    """Whether an ``authorization`` value is ``Bearer <one of tokens>``, compared against every
    token without stopping early, so timing reveals nothing."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    token_bytes = token.strip().encode("utf-8", "replace")
    return sum(hmac.compare_digest(token_bytes, t) for t in tokens) > 0


class BearerTokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, tokens: list[bytes] | None, on_refused=None,
                 admin_tokens: list[bytes] | None = None):
        self._tokens = None if tokens is None else list(tokens)  # None: no token needed
        self._admin = None if admin_tokens is None else list(admin_tokens)
        self._on_refused = on_refused  # e.g. a metrics counter of refused requests

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        admin = self._admin is not None and method in ADMIN_METHODS
        tokens = self._admin if admin else self._tokens
        if tokens is None:
            return handler
        headers = [value for key, value in handler_call_details.invocation_metadata or ()
                   if key == "authorization"]
        # Exactly one: with two, which one counts would depend on who reads them.
        if len(headers) == 1 and token_matches(headers[0], tokens):
            return handler
        if admin:
            return refusal(handler, grpc.StatusCode.PERMISSION_DENIED, "this action needs an "
                           "operator's token (admin_token_file)")
        if self._on_refused is not None:
            self._on_refused()
        return refusal(handler, grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer "
                       "token (metadata 'authorization: Bearer <token>')")
