"""The MLflow UI on a run's store, and headless screenshots of it.

    python -m analysis.ui --out-dir outputs                      # serves http://127.0.0.1:5000 until Ctrl-C
    python -m analysis.ui --out-dir outputs --sweep smoke --screenshot ui/   # start, shoot, stop

It prints the pages worth opening: the experiment's runs (child runs fold under their sweep's
parent run), the sweep's parent run, and the sweep's cells side by side (run comparison: every
cell's params and metrics). Bound to 127.0.0.1 unless --host says otherwise: the UI has no
authentication. Screenshots use headless Chromium (Debian's `chromium` package)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from analysis.records import AnalysisError, client_for


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def store_uri(out_dir: str | Path) -> str:
    db = Path(out_dir).resolve() / "mlflow.db"
    if not db.exists():
        raise AnalysisError(f"no MLflow store at {db} (run a sweep with out_dir={out_dir} first)")
    return f"sqlite:///{db}"


def ui_command(backend_uri: str, host: str, port: int) -> tuple[list[str], dict]:
    """`mlflow ui` for one person looking at a local store: one worker process and no job runner
    (MLflow 3 otherwise starts 4 workers and a job-runner process, each importing MLflow: ready
    in 34-37 s instead of 19-24 s on 2 busy cores)."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", backend_uri, "--host", host, "--port", str(port),
           "--workers", "1"]
    return cmd, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@contextmanager
def serve(backend_uri: str, host: str = "127.0.0.1", port: int | None = None, timeout_s: float = 90.0):
    """`mlflow ui` on `backend_uri`, up and answering, stopped (its whole process group) on exit.
    Yields the base URL."""
    port = port or free_port(host)
    cmd, env = ui_command(backend_uri, host, port)
    private = tempfile.TemporaryDirectory(prefix="mlflow-ui-")  # 0700, removed on exit with the log
    log = open(Path(private.name) / "ui.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise AnalysisError(f"mlflow ui exited ({proc.returncode}): {Path(log.name).read_text()[-300:].strip()}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AnalysisError(f"mlflow ui did not answer at {base} within {timeout_s:.0f} s: {Path(log.name).read_text()[-300:].strip()}")
            time.sleep(0.5)
        yield base
    finally:
        # mlflow ui forks workers: stop the whole group, then make sure
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=wait)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
        log.close()
        private.cleanup()


def pages(backend_uri: str, sweep: str | None, experiment: str = "harness", base: str = "http://127.0.0.1:5000") -> dict[str, str]:
    """URLs of the experiment's runs; of a sweep's parent run (its metrics and child runs), of
    one of its cells (the one with the smallest id) and of all of them side by side."""
    from analysis.records import load

    client = client_for(backend_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise AnalysisError(f"no MLflow experiment '{experiment}' in {backend_uri}")
    out = {"runs": f"{base}/#/experiments/{exp.experiment_id}/runs"}  # (3.x opens experiments on a GenAI overview)
    if sweep:
        study = load(backend_uri, sweep, experiment=experiment)
        runs = [study.parent_run_id] + [r.run_id for r in study.records if r.run_id]
        out["sweep"] = f"{base}/#/experiments/{exp.experiment_id}/runs/{study.parent_run_id}"
        first = min((r for r in study.completed if r.run_id), key=lambda r: r.cell, default=None)
        if first is not None:  # one cell's run: its metrics in full
            out["cell"] = f"{base}/#/experiments/{exp.experiment_id}/runs/{first.run_id}"
        query = urllib.parse.urlencode({"runs": json.dumps(runs), "experiments": json.dumps([exp.experiment_id])})
        out["cells"] = f"{base}/#/compare-runs?{query}"
    return out


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    raise AnalysisError("no Chromium found: install Debian's `chromium` package (apt-get install --no-install-recommends chromium)")


def browse(url: str, screenshot: Path | None = None, size=(1400, 900), budget_ms: int = 20000, timeout_s: int = 120) -> str:
    """Open `url` in headless Chromium and return the rendered DOM; save a PNG if asked."""
    profile = tempfile.mkdtemp(prefix="chromium-")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={budget_ms}"]
    try:
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([chromium(), *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=timeout_s, check=False)
            if not screenshot.exists():
                raise AnalysisError(f"Chromium wrote no screenshot of {url}")
        done = subprocess.run([chromium(), *flags, "--dump-dom", url], capture_output=True, text=True, timeout=timeout_s)
        return done.stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def visible_text(dom: str) -> str:
    """The text a reader sees in a rendered DOM: tags, styles and scripts dropped, spaces collapsed."""
    import html
    import re

    dom = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom))).strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default="outputs", help="the run's out_dir (its mlflow.db)")
    parser.add_argument("--tracking-uri", help="a backend store URI instead (sqlite:///..., postgresql://...)")
    parser.add_argument("--sweep", help="a sweep name or id: print (and shoot) its pages")
    parser.add_argument("--experiment", default="harness")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: the UI has no authentication)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--screenshot", metavar="DIR", help="start the UI, save PNGs of its pages in DIR, stop")
    args = parser.parse_args(argv)
    try:
        uri = args.tracking_uri or store_uri(args.out_dir)
        if args.screenshot:
            with serve(uri, args.host, free_port(args.host)) as base:
                for name, url in pages(uri, args.sweep, args.experiment, base).items():
                    path = Path(args.screenshot) / f"mlflow_{name}.png"
                    browse(url, path)
                    print(path)
            return 0
        base = f"http://{args.host}:{args.port}"
        for name, url in pages(uri, args.sweep, args.experiment, base).items():
            print(f"{name:6s} {url}")
        print(f"serving {uri} at {base} (Ctrl-C stops)", flush=True)
        cmd, env = ui_command(uri, args.host, args.port)
        return subprocess.call(cmd, env=env)
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
