"""schemathesis against the running API's own OpenAPI schema: no server error, no lie."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from api_procs import RedisServer, StartApi, seed

from reco_common.contracts import RedisKeys

MAX_EXAMPLES = 30


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    redis_server: RedisServer, keys: RedisKeys, start_api: StartApi, tmp_path: Path
) -> None:
    await seed(redis_server, keys.prefix, users=5, popular=["p1", "p2"])
    api = start_api()
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{api.ops_url}/openapi.json",  # the schema is on the internal port, the API is not
        f"--url={api.base_url}",
        "--checks=all",
        f"--max-examples={MAX_EXAMPLES}",
        "--workers=1",
        "--seed=20261123",
        "--generation-database=none",
        "--request-timeout=5",
        "--no-color",
    ]
    result = await asyncio.to_thread(
        subprocess.run, command, cwd=tmp_path, capture_output=True, text=True, timeout=110
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout
