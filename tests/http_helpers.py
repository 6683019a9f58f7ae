"""Running an aiohttp application for one test: ``run_with(app, fn)`` awaits ``fn(base_url)``."""

import asyncio

from aiohttp.test_utils import TestServer


def run_with(app, fn):
    async def main():
        server = TestServer(app)
        await server.start_server()
        try:
            return await fn(str(server.make_url("")).rstrip("/"))
        finally:
            await server.close()

    return asyncio.run(main())
