"""Reading request bodies with a cap, shared by the API and the dashboard."""

from __future__ import annotations

from aiohttp import web

from aggregation_service.errors import ApiError


async def read_capped(request: web.Request, cap: int) -> bytes:
    """The whole body, refusing (413) anything over ``cap`` bytes without buffering it."""
    if request.content_length is not None and request.content_length > cap:
        raise ApiError(
            413, "too_large", f"body of {request.content_length} bytes exceeds the limit of {cap}"
        )
    data = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        data.extend(chunk)
        if len(data) > cap:
            raise ApiError(413, "too_large", f"body exceeds the limit of {cap} bytes")
    return bytes(data)
