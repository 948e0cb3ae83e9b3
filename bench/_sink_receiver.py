"""A minimal §6 endpoint for `bench/drain.py --receiver sink`: what the hub alone can drain.

It checks the token and the `Idempotency-Key`, gunzips and parses the body, and answers every record
id as accepted (or duplicate when seen before), storing nothing but the set of ids. It does not
validate records: it exists to measure the node's side of the drain without the reference
receiver's per-record checks and database, never as a platform.

    python bench/_sink_receiver.py PORT TOKEN     # prints "listening on URL"; GET /count for the tally
"""

from __future__ import annotations

import json
import sys
import zlib

from aiohttp import web


def make_app(token: str) -> web.Application:
    """The sink's two routes: batches in, and the count of ids received (total and distinct)."""
    seen: set[str] = set()
    received = 0

    async def batch(request: web.Request) -> web.Response:
        nonlocal received
        if request.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response({"error": "invalid token"}, status=401)
        body = await request.read()
        document = json.loads(zlib.decompress(body, wbits=16 + zlib.MAX_WBITS))
        if request.headers.get("Idempotency-Key") != document["batch_id"]:
            return web.json_response({"error": "Idempotency-Key differs from batch_id"}, status=400)
        accepted: list[str] = []
        duplicate: list[str] = []
        for record in document["records"]:
            record_id = record["id"]
            (duplicate if record_id in seen else accepted).append(record_id)
            seen.add(record_id)
        received += len(document["records"])
        return web.json_response({"accepted": accepted, "duplicate": duplicate, "rejected": []})

    async def count(_request: web.Request) -> web.Response:
        return web.json_response({"received": received, "distinct": len(seen)})

    app = web.Application(client_max_size=64 * 2**20, handler_args={"auto_decompress": False})
    app.router.add_post("/v1/nodes/{node_id}/batches", batch)
    app.router.add_get("/count", count)
    return app


def main() -> None:
    """Serve on 127.0.0.1:PORT until killed."""
    port, token = int(sys.argv[1]), sys.argv[2]
    print(f"sink receiver listening on http://127.0.0.1:{port}", flush=True)
    web.run_app(make_app(token), host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
