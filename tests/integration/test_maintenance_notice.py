"""The maintenance notice (issue 23, PATCH_SYSTEM.md's "notify users about maintenance"): while an
apply keeps the app's services stopped, its port answers HTTP 503 with ``Retry-After`` and the
operator's page; the port is free again for the new version, which then answers. Real install
(sample, command services, real PostgreSQL); a migration that takes a few seconds keeps the
window open while the test polls the port."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.installs import Install, health, inv_popen, wait_until

pytestmark = pytest.mark.integration
SLOW = 'SELECT pg_sleep(2);\nCREATE TABLE "Notice" ("id" INTEGER PRIMARY KEY);\n'


def _answer(url: str) -> tuple[int, str, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return response.status, "", response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Retry-After", ""), exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, "", ""


def test_the_apps_port_answers_503_with_the_page_while_stopped_and_the_new_version_after(
    install: Install, tmp_path: Path
) -> None:
    install.release(tmp_path, "2.3.0", migration=SLOW)
    (install.root / "maintenance.html").write_text("<h1>PrimeFlow is being updated (back at 02:05)</h1>\n")
    env = {"PATCHFLOW_MAINTENANCE_PORTS": f"127.0.0.1:{install.port}", "PATCHFLOW_MAINTENANCE_PAGE": "maintenance.html"}
    proc = inv_popen(install, "apply-patch", "--version", "2.3.0", "--yes", env=env)
    seen: list[tuple[int, str, str]] = []

    def notice() -> bool:
        seen.append(_answer(f"http://127.0.0.1:{install.port}/dashboard"))
        return seen[-1][0] == 503 or proc.poll() is not None

    wait_until(notice, 180, "the maintenance notice on the app's port", interval=0.05)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    code, retry, page = seen[-1]
    assert (code, retry) == (503, "30") and "PrimeFlow is being updated" in page, seen[-3:]
    assert "maintenance notice off: the ports are free for the services" in out
    assert health(install) == (200, "2.3.0")


def test_planned_maintenance_answers_503_until_off_and_applies_refuse_meanwhile(
    install: Install, tmp_path: Path
) -> None:
    install.release(tmp_path, "2.3.0")
    env = {"PATCHFLOW_MAINTENANCE_PORTS": f"127.0.0.1:{install.port}"}
    held = install.inv("maintenance", "--on", env=env)
    assert held.returncode != 0 and "Stop the app first" in " ".join(held.stderr.split()), held.stdout + held.stderr

    assert install.inv("down").returncode == 0
    on = install.inv("maintenance", "--on", env=env)
    assert on.returncode == 0, on.stdout + on.stderr
    code, retry, page = _answer(f"http://127.0.0.1:{install.port}/")
    assert (code, retry) == (503, "30") and "We are updating the application" in page
    refused = install.inv("apply-patch", "--version", "2.3.0", "--yes", env=env)
    assert refused.returncode == 1 and "inv maintenance --off" in refused.stderr
    assert "MAINTENANCE" in install.inv("patch-status").stdout

    off = install.inv("maintenance", "--off", env=env)
    assert off.returncode == 0 and "maintenance notice off" in off.stdout
    assert _answer(f"http://127.0.0.1:{install.port}/")[0] == 0, "the port is free again"
    assert install.inv("up").returncode == 0
    wait_until(lambda: health(install) == (200, "2.2.0"), 60, "the app back on its port")
