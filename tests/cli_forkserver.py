"""A fork server for the tests' command-line runs (`tests.conftest.run_cli`).

Each `python -m harness ...` a test starts would spend about 5 CPU-seconds importing torch,
diffusers, transformers and Hydra before it reads its first argument (README, "Costs"); the
suite starts about 70 of them. This server imports those libraries once per pytest worker, then
forks a copy of itself for each run, which executes the command's module as `python -m` would
(`runpy`, with the run's argv, environment and working directory) and writes its stdout and
stderr to files the test reads. Nothing of the harness is imported before the fork, so every
run imports the harness, its configs and its plugins afresh, as a new process does.

What a fork cannot give a run falls back to a fresh process (`subprocess.run`, as before):
- an environment that differs from the server's in a variable that a library reads when it
  is imported (OMP_*, MKL_*, ATEN_*, PYTHON*, ...: SENSITIVE), e.g. the AVX2 pin;
- HARNESS_TEST_FRESH_PROCESSES=1 in the environment: every run in a fresh process (the
  whole suite then runs as it did without this server);
- a server that is not running (it failed to start, or died): it is not restarted;
- a server with more than one thread once its libraries are imported (torch starts an OpenMP
  pool at import unless OMP_NUM_THREADS=1, which `make test` sets): it does not start.

Protocol (one Unix-socket connection per run, in a private folder): the client sends one JSON
line {module, args, env, cwd, out, err}; the server forks a waiter, which forks the run and
answers `pid <n>` at once and `status <n>` (os.waitpid's) when the run ends. The waiter keeps
the server single-threaded, so every fork copies a process with one thread."""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

# What a run of the harness's CLI imports from outside it and takes seconds (python -X importtime).
PRELOAD = (
    "torch",
    "numpy",
    "PIL.Image",
    "safetensors.torch",
    "torchvision",
    "diffusers.models.unets.unet_2d_condition",
    "diffusers.schedulers",
    "transformers.models.clip.modeling_clip",
    "transformers.models.clip.tokenization_clip",
    "hydra",
    "hydra.core.global_hydra",
    "omegaconf",
)
# Environment variables read by Python or by a preloaded library when it starts or is imported:
# a run whose value differs from the server's would not see its own, so it runs in a fresh process.
SENSITIVE = ("PYTHON", "OMP_", "KMP_", "MKL_", "ATEN_", "ONEDNN_", "DNNL_", "TORCH", "PYTORCH_", "CUDA_", "NVIDIA_",
             "HF_", "TRANSFORMERS_", "DIFFUSERS_", "HYDRA_", "LD_", "MALLOC_", "GOMP_", "TRITON_", "XDG_CACHE_HOME", "HOME")
FRESH = "HARNESS_TEST_FRESH_PROCESSES"


def sensitive(key: str) -> bool:
    return key.startswith(SENSITIVE)


def forkable(server_env: dict, env: dict) -> bool:
    """The run's environment agrees with the server's on every variable read at start-up."""
    keys = {k for k in (*server_env, *env) if sensitive(k)}
    return all(server_env.get(k) == env.get(k) for k in keys)


# ---------------------------------------------------------------- server side

def _run(request: dict) -> None:
    """In the forked run: become `python -m <module> <args>` and exit with its code."""
    out = os.open(request["out"], os.O_WRONLY | os.O_TRUNC)
    err = os.open(request["err"], os.O_WRONLY | os.O_TRUNC)
    null = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    # `python -m` puts the working directory first on the path; PYTHONPATH's entries were
    # read by the server at its start (PYTHONPATH is SENSITIVE, so they are the run's)
    sys.path[0] = os.getcwd()
    sys.argv = [request["module"], *request["args"]]
    if "numpy" in sys.modules:  # its global generator was seeded from the OS in the server; each run its own, as when fresh
        sys.modules["numpy"].random.seed()
    import importlib.util

    try:
        if importlib.util.find_spec(request["module"]) is None:  # as `python -m` says it
            print(f"{sys.executable}: No module named {request['module']}", file=sys.stderr)
            _exit(1)
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # as a fresh interpreter would: the traceback on stderr, exit code 1
        import traceback

        traceback.print_exc()
        code = 1
    _exit(code)


def _exit(code) -> None:
    """End the run as the interpreter's exit does (threading's exit hooks and its non-daemon
    threads joined, then the atexit handlers, then the streams flushed), less the teardown of
    every module the server imported, which added 1.4 s to each run and which a program cannot
    observe."""
    import atexit
    import threading

    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): the message on stderr, exit code 1
        print(code, file=sys.stderr)
        code = 1
    # CPython's own first step of finalization: the threading module's exit hooks (which stop,
    # e.g., concurrent.futures' worker threads), then every non-daemon thread joined
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken stream: nothing left to write
            stream.flush()
    os._exit(code)


def _wait_for(conn: socket.socket, request: dict) -> None:
    """In the waiter: fork the run, report its pid, then its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            conn.close()
            _run(request)  # ends in os._exit
        finally:
            os._exit(70)  # whatever else happens, never back into the server's loop
    conn.sendall(f"pid {pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    conn.sendall(f"status {status}\n".encode())
    conn.close()


def serve(path: str, parent: int) -> None:
    """Import PRELOAD, then fork a waiter per connection until the parent (the pytest worker)
    is gone. The waiters are reaped as they end; the server itself stays single-threaded."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    threads = len(os.listdir("/proc/self/task"))
    if threads > 1:  # e.g. torch's OpenMP pool without OMP_NUM_THREADS=1: a fork would copy one thread of it
        print(f"not forking: {threads} threads after the imports", flush=True)
        return
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    listener.settimeout(1.0)
    print("ready", flush=True)
    while os.getppid() == parent:
        with contextlib.suppress(ChildProcessError):  # reap the waiters that ended; none left
            while os.waitpid(-1, os.WNOHANG)[0]:
                continue
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        conn.settimeout(None)
        with conn.makefile("r") as lines:
            request = json.loads(lines.readline())
        if os.fork() == 0:
            try:
                listener.close()
                with contextlib.suppress(OSError):  # the client gave up on a run it killed: nobody to answer
                    _wait_for(conn, request)
            finally:
                os._exit(0)  # the waiter never returns into the server's loop
        conn.close()


# ---------------------------------------------------------------- client side

class Server:
    """One per pytest worker, started on first use, stopped with the worker."""

    def __init__(self, repo: Path):
        self.folder = tempfile.mkdtemp(prefix="cli-forkserver-")  # private: mode 0700
        self.path = os.path.join(self.folder, "socket")
        self.env = {**os.environ, "PYTHONPATH": str(repo)}
        self.proc = subprocess.Popen([sys.executable, "-c", f"from tests.cli_forkserver import serve; serve({self.path!r}, {os.getpid()})"],
                                     cwd=repo, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        self.ready = self.proc.stdout.readline().strip() == "ready"

    def alive(self) -> bool:
        return self.ready and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        for name in os.listdir(self.folder):
            os.unlink(os.path.join(self.folder, name))
        os.rmdir(self.folder)

    def run(self, module: str, args: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
        """`python -m module *args` as subprocess.run(..., capture_output=True, text=True) returns it."""
        cmd = [sys.executable, "-m", module, *args]
        with tempfile.TemporaryDirectory(prefix="cli-run-") as folder:
            out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
            for f in (out, err):
                open(f, "w").close()
            request = {"module": module, "args": list(args), "env": env, "cwd": str(cwd), "out": out, "err": err}
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(self.path)
            conn.sendall((json.dumps(request) + "\n").encode())
            conn.settimeout(timeout)
            answers = conn.makefile("r")
            pid = status = None
            try:
                pid = int(answers.readline().split()[1])
                status = int(answers.readline().split()[1])
            except TimeoutError:
                if pid:
                    os.kill(pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired(cmd, timeout, Path(out).read_text(), Path(err).read_text()) from None
            finally:
                answers.close()
                conn.close()
            code = os.waitstatus_to_exitcode(status)
            return subprocess.CompletedProcess(cmd, code, Path(out).read_text(errors="replace"), Path(err).read_text(errors="replace"))
