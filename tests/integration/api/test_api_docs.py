"""The docs page as a person would see it: headless Chromium with no network beyond loopback.

FastAPI's default ``/docs`` loads Swagger UI from a public CDN and renders blank offline; ours
serves the files from a package (reco_api.docs). Chromium resolves no host but 127.0.0.1 here,
so the page renders the operations only if everything it needs comes from the API itself.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest
from api_procs import StartApi

CHROMIUM = Path("/usr/bin/chromium")
OPERATION = "/v1/users/{user_id}/recommendations"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is not installed (.ci/run installs Debian's chromium)",
)


def chromium(url: str, *, profile: Path, output: list[str]) -> list[str]:
    """Headless Chromium that can reach nothing but loopback (no DNS, no background traffic)."""
    return [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--window-size=1280,2000",
        "--virtual-time-budget=5000",
        *output,
        url,
    ]


def test_the_docs_page_renders_the_operations_from_the_api_alone(
    start_api: StartApi, tmp_path: Path
) -> None:
    api = start_api()
    page = httpx.get(f"{api.ops_url}/docs", timeout=5).text
    loaded = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert loaded, page
    assert all(url.startswith("/docs/assets/") for url in loaded), loaded

    rendered = subprocess.run(
        chromium(f"{api.ops_url}/docs", profile=tmp_path / "profile", output=["--dump-dom"]),
        capture_output=True,
        text=True,
        timeout=90,
    )

    assert rendered.returncode == 0, rendered.stderr[-2000:]
    assert f'data-path="{OPERATION}"' in rendered.stdout, rendered.stdout[-2000:]
    assert 'data-path="/readyz"' in rendered.stdout
