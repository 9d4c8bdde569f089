"""Reading request bodies with a cap and a deadline, shared by the API and
the dashboard."""

from __future__ import annotations

import asyncio

from aiohttp import web

from aggregation_service.config import ConnectionLimits
from aggregation_service.errors import ApiError

# The app's connection limits (create_app sets them; defaults otherwise).
LIMITS = web.AppKey("limits", ConnectionLimits)


async def read_capped(request: web.Request, cap: int) -> bytes:
    """The whole body, refusing (413) anything over ``cap`` bytes without
    buffering it, and (408) a body that trickles in slower than the limits allow."""
    if request.content_length is not None and request.content_length > cap:
        raise ApiError(
            413, "too_large", f"body of {request.content_length} bytes exceeds the limit of {cap}"
        )
    limits = request.app.get(LIMITS) or ConnectionLimits()
    size = request.content_length if request.content_length is not None else cap
    deadline = limits.body_deadline_s(size)
    data = bytearray()
    try:
        async with asyncio.timeout(deadline):
            async for chunk in request.content.iter_chunked(1 << 16):
                data.extend(chunk)
                if len(data) > cap:
                    raise ApiError(413, "too_large", f"body exceeds the limit of {cap} bytes")
    except TimeoutError:
        raise ApiError(
            408,
            "body_timeout",
            f"the body did not arrive within {deadline:.0f} s "
            f"({len(data)} of {size if request.content_length is not None else '?'} bytes)",
            headers={"Connection": "close"},
        ) from None
    return bytes(data)
