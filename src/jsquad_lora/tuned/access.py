"""Who may use `serve`: the Host check and the API-key check, ASGI middleware in front of every route
(serve.py installs them; the refusals are serving.py's error replies, or OpenAI's shape on its routes).

Written here by hand, as neither FastAPI nor Starlette offers it:
- the Host check (`HostRule`): a request must name this server as it is bound (its address in any
  spelling, the loopback names when it listens on loopback, the machine's name when others can reach
  it, the `--allow-host` names), so a web page cannot reach it through a DNS name it rebinds to this
  machine. Starlette's TrustedHostMiddleware knows only a fixed list of names and answers plain text.
- the API key check (`KeyCheck`): FastAPI's HTTPBearer is per route and answers in its own shape.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import socket
from collections.abc import Callable, Sequence

from fastapi.responses import Response

from jsquad_lora.errors import InputError
from jsquad_lora.tuned.serving import RequestError, echo, error_response

#: the environment variable `serve` reads its API key from when none is passed
API_KEY_ENV = "JSQUAD_LORA_API_KEY"
#: names of this machine's loopback addresses (RFC 6761: every name under .localhost is too)
LOOPBACK_NAMES = ("localhost", "ip6-localhost", "ip6-loopback")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(text: str) -> Address | None:
    """`text` as an IP address (brackets and a zone dropped, an IPv4-mapped IPv6 address as IPv4), else None."""
    try:
        address = ipaddress.ip_address(text.removeprefix("[").removesuffix("]").split("%")[0])
    except ValueError:
        return None
    return getattr(address, "ipv4_mapped", None) or address


def _host_of(value: str) -> str | Address | None:
    """The name (lowercase, no final dot) or address a Host header value names, its port dropped; None if it
    is not a host (an IPv6 address must be in brackets). Nothing is looked up."""
    value = value.strip().lower()
    if value.startswith("["):
        inside, bracket, port = value[1:].partition("]")
        address = _ip(inside) if bracket and ":" in inside else None
        return address if address is not None and re.fullmatch(r"(:[0-9]*)?", port) else None
    name, _, port = value.partition(":")
    name = name.removesuffix(".")
    if not re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*", name) or not re.fullmatch(r"[0-9]*", port):
        return None
    return _ip(name) or name


def _is_loopback_name(name: str) -> bool:
    return name in LOOPBACK_NAMES or name.endswith(".localhost")


class HostRule:
    """The Host header values a server bound to `bind` answers (a web page elsewhere that points a DNS name
    it controls at this machine, DNS rebinding, sends that name, so it is refused; an IP address cannot be
    rebound). Accepted: the address the request reached, and the bound one (any spelling); with a loopback
    or wildcard bind the loopback names and addresses; with a bind others can reach this machine's name;
    `bind` itself when it is a name; the `allow` names (--allow-host; "*": any Host)."""

    def __init__(self, bind: str, allow: Sequence[str] = ()):
        bound = self._bound(bind)
        self.loopback = any(a.is_loopback or a.is_unspecified for a in bound)
        self.local_only = bool(bound) and all(a.is_loopback for a in bound)
        self.addresses = {a for a in bound if not a.is_unspecified}
        self.names = set(LOOPBACK_NAMES if self.loopback else ())
        if not self.local_only:
            self.names |= {socket.gethostname().lower(), socket.gethostname().lower().split(".")[0]}
        if isinstance(named := _host_of(bind), str):
            self.names.add(named)
        self.any = "*" in allow
        for value in (v for v in allow if v != "*"):
            if (host := _host_of(value)) is None:
                raise InputError(
                    "--allow-host", f"not a host name: {echo(value)}", fix="pass a name (app.example.org) or an address"
                )
            (self.names if isinstance(host, str) else self.addresses).add(host)

    @staticmethod
    def _bound(bind: str) -> set[Address]:
        """The addresses `bind` listens on: an address, a wildcard, a loopback name, else what the name resolves
        to (the bind address is looked up, as uvicorn will; a request's Host never is)."""
        bind = bind.strip()
        if not bind:
            return {ipaddress.IPv4Address(0)}
        if (address := _ip(bind)) is not None:
            return {address}
        if _is_loopback_name(bind.lower().removesuffix(".")):
            return {ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1")}
        try:
            return {a for info in socket.getaddrinfo(bind, None) if (a := _ip(str(info[4][0]))) is not None}
        except OSError:  # uvicorn will say it cannot bind
            return set()

    def answers(self, host: str | Address | None, local: Address | None) -> bool:
        """Whether a request addressed to `host` (from _host_of) that reached the address `local` is answered."""
        if host is None:
            return self.any
        if self.any or host in self.names or host in self.addresses or host == local:
            return True
        return self.loopback and (_is_loopback_name(host) if isinstance(host, str) else host.is_loopback)

    def refusal(self, values: list[str], local: Address | None) -> RequestError | None:
        """None if a request with these Host header values (one, normally) is answered, else its 400."""
        if len(values) == 1 and self.answers(_host_of(values[0]), local):
            return None
        said = "no Host header" if not values else f"Host {', '.join(map(echo, values))}"
        return RequestError(
            400,
            f"{said}: this server answers only requests addressed to a name or address it is bound to",
            "Host",
            fix=f"address it as one of {', '.join(sorted(self.names)) or 'its address'}, or by its IP address; "
            "to accept another name (a reverse proxy's), start it with --allow-host NAME",
        )


#: a refusal as the reply of the route at a path (the OpenAI routes have their own error shape)
Reply = Callable[[RequestError, str], Response]


class HostCheck:
    """ASGI middleware: a request whose Host `rule` refuses gets a 400 before any route sees it."""

    def __init__(self, app, rule: HostRule, reply: Reply = lambda err, path: error_response(err)):
        self.app, self.rule, self.reply = app, rule, reply

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            values = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
            server = scope.get("server")  # (address, port) of the socket the request reached
            if (refused := self.rule.refusal(values, _ip(str(server[0])) if server else None)) is not None:
                if scope["type"] == "websocket":
                    return await send({"type": "websocket.close", "code": 1008})
                return await self.reply(refused, scope["path"])(scope, receive, send)
        await self.app(scope, receive, send)


class KeyCheck:
    """ASGI middleware: with an API key, a request to a /v1/ path without `Authorization: Bearer KEY` gets a 401
    (the key compared in constant time). The page (/) needs none: it holds nothing but its own code."""

    def __init__(self, app, key: str, reply: Reply):
        self.app, self.key, self.reply = app, key.encode(), reply

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            scheme, _, token = given.partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)):
                said = "no API key given" if not given else "the API key given is not this server's"
                refused = RequestError(
                    401,
                    said,
                    "Authorization",
                    fix="send the header Authorization: Bearer KEY, KEY as given to --api-key or $" + API_KEY_ENV,
                    code="invalid_api_key",
                )
                reply = self.reply(refused, scope["path"])
                reply.headers["WWW-Authenticate"] = "Bearer"
                return await reply(scope, receive, send)
        await self.app(scope, receive, send)
