"""What decides a cell's numbers beyond its config: the kernels torch runs, and the
reproducible mode that pins them.

The same config gives different floating-point results on CPUs whose torch dispatches to
other vector kernels: on an AVX-512 host a distill cell's FID moved from 2.27 (AVX2, the
committed tables) to 3.50, and every two-stage cell built on it moved as much as the gaps
between methods. So every cell records its kernel set (`describe()`, in environment.json and
as MLflow tags), tables never average cells of different kernel sets silently, and
`runtime.reproducible=true` pins what can be pinned:

- CPU: torch's ATen kernels to AVX2 (every x86-64 CPU of the last decade has it), MKL to its
  strict reproducible COMPATIBLE branch (the one MKL keeps the same on Intel and other x86-64
  CPUs), oneDNN off (its JIT kernels choose their blocking from the CPU's cache sizes; its
  ISA is capped at AVX2 too, for whatever still reaches it); these variables are read when each library first runs, so they are set
  before the process starts (`python -m harness` re-executes itself with them); and a fixed
  number of torch threads (`runtime.threads`, 2 by default; how a reduction is split over
  threads changes its sums: 1 and 2 threads differ);
- CUDA: deterministic algorithms where torch has them, no TF32, no cuDNN autotuning, and
  cuBLAS's fixed workspace.
"""

from __future__ import annotations

import os
import platform
import re
import sys

# Read by ATen (its dispatch), MKL and oneDNN at their first use in a process.
# MKL: its conditional numerical reproducibility in the COMPATIBLE branch (SSE2), strict. Its AVX2
# branch is Intel-only (elsewhere MKL_CBWR=AVX2 falls back to AUTO and other results), and
# without strict CNR its AVX2 kernels depend on buffer alignment: a cell killed and resumed under
# MKL_ENABLE_INSTRUCTIONS=AVX2 ended with other weights than an uninterrupted run (Intel Xeon).
CPU_PIN = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2"}
CUDA_PIN = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}  # cuBLAS is deterministic only with a fixed workspace
PINNED = "HARNESS_REPRODUCIBLE"  # set in the environment of a pinned process (and its children)
REPRODUCIBLE_THREADS = 2  # the reference tables' machine: 2 cores


def threads_for(runtime) -> int | None:
    """Torch threads a cell runs with: `runtime.threads`, else 2 in the reproducible mode,
    else torch's default (None)."""
    if runtime.get("threads"):
        return int(runtime.threads)
    return REPRODUCIBLE_THREADS if runtime.get("reproducible") else None


def pin_environment() -> dict[str, str]:
    """The environment variables the reproducible mode sets (x86-64 only for the CPU pin)."""
    pin = dict(CUDA_PIN)
    if platform.machine().lower() in ("x86_64", "amd64"):
        pin.update(CPU_PIN)
    return {**pin, PINNED: "1"}


def is_pinned(environ=os.environ) -> bool:
    return all(environ.get(k) == v for k, v in pin_environment().items())


def reexec_pinned(argv: list[str], module: str = "harness") -> None:
    """Replace this process by the same command (`python -m <module> <argv>`) with the pinned
    environment (before torch has computed anything). A no-op where it is pinned already."""
    if is_pinned():
        return
    env = {**os.environ, **pin_environment()}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


def apply(runtime) -> None:
    """In-process settings of `runtime.reproducible` and `runtime.threads` (the environment
    part of the mode is `reexec_pinned`)."""
    import torch

    reproducible, threads = bool(runtime.get("reproducible")), threads_for(runtime)
    if threads:
        torch.set_num_threads(int(threads))
    torch.use_deterministic_algorithms(reproducible, warn_only=True)
    # oneDNN's JIT kernels pick their blocking from the CPU's cache sizes, so the same ISA can
    # sum in another order on another CPU: the mode runs ATen's own kernels (and MKL) instead
    torch.backends.mkldnn.enabled = not reproducible
    if reproducible:
        # warn_only: some CUDA backward kernels (e.g. nearest upsampling) have no deterministic
        # version; torch warns about each instead of failing the cell
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def shell_exports() -> list[str]:
    """The pin as shell lines, for a job script (SLURM)."""
    return [f"export {k}={v}" for k, v in pin_environment().items()]


def check(reproducible: bool) -> str | None:
    """Why this process cannot give reproducible numbers (None: it can)."""
    if not reproducible:
        return None
    if not is_pinned():
        missing = ", ".join(f"{k}={v}" for k, v in pin_environment().items() if os.environ.get(k) != v)
        return f"this process's kernels are not pinned (start it with python -m harness, or set {missing})"
    want = CPU_PIN["ATEN_CPU_CAPABILITY"].upper()
    got = describe()["cpu_capability"]
    if CPU_PIN["ATEN_CPU_CAPABILITY"] in os.environ.get("ATEN_CPU_CAPABILITY", "") and got not in (want, None):
        return f"torch runs {got} kernels though ATEN_CPU_CAPABILITY asks for {want}"
    return None


def _config_line(text: str, pattern: str) -> str | None:
    match = re.search(pattern, text)
    return match.group(1).strip() if match else None


def describe() -> dict:
    """What decides the numbers of this process: kernel set, libraries, threads, determinism."""
    import torch

    config = torch.__config__.show()
    info = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_vendor": cpu_vendor(),
        "pinned_env": {k: os.environ.get(k) for k in (*CPU_PIN, "MKL_ENABLE_INSTRUCTIONS", *CUDA_PIN)},
        "blas": _config_line(config, r"BLAS_INFO=([^,\n]+)"),
        "mkl": _config_line(config, r"Intel\(R\) (?:oneAPI )?Math Kernel Library Version ([^\n]+)") if torch.backends.mkl.is_available() else None,
        "onednn": _config_line(config, r"(?:MKL-DNN|oneDNN) (v[^\s(]+)") if torch.backends.mkldnn.is_available() else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "onednn_enabled": torch.backends.mkldnn.enabled,
        "cuda": None,
    }
    if torch.cuda.is_available():
        info["cuda"] = {
            "device": torch.cuda.get_device_name(0),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        }
    return info


# A CPU's vendor in the kernel set, where it is not Intel's. The same pin (AVX2, MKL's strict
# COMPATIBLE branch, oneDNN off, 2 threads) computed other bits on an AMD EPYC (session 24:
# 17 of the reference cell's 62 metrics differ, by 7e-8 to 2e-4 relative, and the student's
# weights) than on the Intel Xeon, while two runs on the EPYC agreed bitwise. Intel's is left
# unnamed: every kernel set recorded before the vendor was came from Intel CPUs.
VENDOR_LABELS = {"GenuineIntel": "", "AuthenticAMD": "amd"}


def cpu_vendor() -> str | None:
    """/proc/cpuinfo's vendor_id (GenuineIntel, AuthenticAMD), or None where there is none."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def kernel_set(info: dict, device: str = "cpu") -> str:
    """A short label of what decides the numbers, equal for two cells that computed alike:
    e.g. `cpu AVX512 mkl t2`, `cpu AVX2 mkl-cnr-compatible nodnnl t2` (reproducible; `... t2 amd`
    on an AMD CPU) or `cuda NVIDIA H100 cudnn 91002 det`."""
    if device.startswith("cuda") and info.get("cuda"):
        c = info["cuda"]
        flags = "det" if c["cudnn_deterministic"] and not c["tf32_matmul"] else ("tf32" if c["tf32_matmul"] else "nondet")
        return f"cuda {c['device']} cudnn {c['cudnn']} {flags}"
    cnr = (info.get("pinned_env") or {}).get("MKL_CBWR")
    blas = info.get("blas") or "noblas"
    if cnr and blas == "mkl":
        blas = f"mkl-cnr-{cnr.split(',')[0].lower()}"
    dnnl = "" if info.get("onednn_enabled", True) else " nodnnl"
    vendor = info.get("cpu_vendor")
    named = VENDOR_LABELS.get(vendor, vendor) if vendor else ""
    return f"cpu {info.get('cpu_capability')} {blas}{dnnl} t{info.get('threads')}" + (f" {named}" if named else "")


def tags(env: dict) -> dict:
    """MLflow tags of a cell's numerics (from its environment record)."""
    info = env.get("numerics") or {}
    cuda = info.get("cuda") or {}
    return {
        "harness.kernel_set": env.get("kernel_set"),
        "numerics.cpu_capability": info.get("cpu_capability"),
        "numerics.blas": info.get("blas"),
        "numerics.threads": info.get("threads"),
        "numerics.deterministic": info.get("deterministic"),
        "numerics.pinned": bool((info.get("pinned_env") or {}).get("ATEN_CPU_CAPABILITY")) if info else None,
        "numerics.gpu": cuda.get("device"),
        "numerics.cudnn": cuda.get("cudnn"),
        "numerics.tf32": cuda.get("tf32_matmul"),
        "host.cpu": env.get("cpu"),
    }
