"""docs/deploy.md's systemd units, made the way the page says: ``honcho export systemd`` from the
shipped Procfile with the venv's python, no ``redis`` process, and the host's settings from its .env."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_honcho_exports_one_systemd_unit_per_process_with_the_hosts_settings(tmp_path: Path) -> None:
    page = (ROOT / "docs" / "deploy.md").read_text()
    script = re.search(r"```sh\n(# systemd units.*?)```", page, re.S)
    assert script, "docs/deploy.md shows how the units are made"
    app = tmp_path / "srv" / "lambdalite"
    app.mkdir(parents=True)
    (app / "Procfile").write_text((ROOT / "Procfile").read_text())
    (app / ".env").write_text("LAMBDALITE_REDIS_URL=redis+sentinel://:secret@10.0.0.1:26379,10.0.0.2:26379/mymaster\n"
                              "LAMBDALITE_MAX_WORKERS=8\n")
    commands = script.group(1).replace("/srv/lambdalite", str(app))
    commands = commands.replace("/etc/systemd/system", str(tmp_path / "units"))
    done = subprocess.run(["sh", "-ec", commands], cwd=app, capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{BIN}:/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    units = {p.name: p.read_text() for p in (tmp_path / "units").iterdir()}
    assert "lambdalite.target" in units
    services = sorted(name for name in units if name.endswith(".service"))
    assert services == [f"lambdalite-{kind}-1.service" for kind in ("files", "scaler", "sqlite", "webhook")], \
        "one unit per process; no redis process on a host that shares a Redis"
    scaler = units["lambdalite-scaler-1.service"]
    assert f"WorkingDirectory={app}" in scaler and "User=lambdalite" in scaler
    assert "exec .venv/bin/python -m workers.scaler" in scaler, "the venv's python, whatever the login PATH"
    assert "Environment=LAMBDALITE_REDIS_URL=redis+sentinel://" in scaler
    assert "Environment=LAMBDALITE_MAX_WORKERS=8" in scaler
    assert "Restart=always" in scaler
