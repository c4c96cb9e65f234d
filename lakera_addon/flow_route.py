"""Which route screens a flow (SPEC section 2): where the connection goes, for the request
hook, `lakera.rescreen` and `lakera-replay` alike."""

from __future__ import annotations

import ipaddress

from mitmproxy import http

from lakera_addon.configuration import Config
from lakera_addon.configuration import Route


def route_of(config: Config, flow: http.HTTPFlow) -> Route | None:
    """The route that screens a flow (the request hook's, lakera.rescreen's, lakera-replay's
    choice): the first matching where the connection goes; None for a flow on no route, and
    for a request without a body sent with a method other than POST (a body sent with another
    method is screened too: servers read it)."""
    if flow.request.method != "POST" and not flow.request.raw_content:
        return None
    return config.route_for(destination(flow), flow.request.path,
                            (flow.request.host_header or "",))


def destination(flow: http.HTTPFlow) -> tuple[str, ...]:
    """The names of the host a flow's connection goes to: the request's host (the reverse-mode
    target, the proxy request's host, the CONNECT target, the transparent destination) and,
    when that is an address, the TLS server name the connection carries."""
    host = flow.request.host
    names = [host]
    if _is_address(host):
        names += [flow.server_conn.sni or "", flow.client_conn.sni or ""]
    return tuple(name for name in names if name)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
