"""Run a training command as several JAX processes on this machine (loopback), one mesh over all.

    python -m experiments.launch_local --procs 2 --devices-per-proc 4 -- --mesh.fsdp 8 --run_dir runs/x

Starts `--procs` copies of `python -m experiments.train <args>` (or `--module`), each with
`--devices-per-proc` simulated CPU devices and the ZORRO_* variables that make them one
`jax.distributed` job (`zorro_jax.parallel.distributed`) with a coordinator on a free loopback
port. Process 0's output is streamed; when any process dies, the others are stopped and the
launcher exits non-zero with the failing process's last lines: a dead peer would otherwise leave
the rest blocked in a collective forever.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from zorro_jax.parallel.distributed import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID

TAIL_LINES = 40


def free_port() -> int:
    """A TCP port nobody listens on now (the coordinator binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(i: int, procs: int, devices: int, port: int) -> dict:
    """The environment of process i: its place in the job and its simulated devices."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update({ENV_COORDINATOR: f"127.0.0.1:{port}", ENV_NUM_PROCESSES: str(procs), ENV_PROCESS_ID: str(i),
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
                "PYTHONUNBUFFERED": "1"})
    return env


def _pump(stream, tail: collections.deque, echo):
    for line in iter(stream.readline, ""):
        tail.append(line)
        if echo is not None:
            echo.write(line)
            echo.flush()
    stream.close()


def _stop(procs):
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait()


def launch(procs: int, devices: int, module: str, args: list[str], poll_s: float = 0.1) -> int:
    """Run the job; returns 0 when every process exits 0, else the first failure's exit code
    (1 for a process killed by a signal)."""
    port = free_port()
    children, tails, pumps = [], [], []
    for i in range(procs):
        p = subprocess.Popen([sys.executable, "-m", module, *args], env=process_env(i, procs, devices, port),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)  # its own group: stopped with its children
        tail = collections.deque(maxlen=TAIL_LINES)
        t = threading.Thread(target=_pump, args=(p.stdout, tail, sys.stdout if i == 0 else None), daemon=True)
        t.start()
        children.append(p)
        tails.append(tail)
        pumps.append(t)
        print(f"[launch_local] process {i}: pid {p.pid}", file=sys.stderr, flush=True)
    try:
        while True:
            codes = [p.poll() for p in children]
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i = failed[0]
                _stop(children)
                for t in pumps:
                    t.join(timeout=5)
                how = f"signal {-codes[i]}" if codes[i] < 0 else f"exit code {codes[i]}"
                print(f"[launch_local] process {i} died ({how}); stopped the others. Its last lines:\n"
                      + "".join(tails[i]), file=sys.stderr, flush=True)
                return codes[i] if codes[i] > 0 else 1
            if all(c == 0 for c in codes):
                for t in pumps:
                    t.join(timeout=5)
                return 0
            time.sleep(poll_s)
    except KeyboardInterrupt:
        _stop(children)
        return 130


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, default=2, help="processes to start (one mesh over all)")
    ap.add_argument("--devices-per-proc", type=int, default=4, help="simulated CPU devices per process")
    ap.add_argument("--module", default="experiments.train", help="the entry point each process runs")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- then the entry point's arguments")
    ns = ap.parse_args(argv)
    if ns.procs < 1 or ns.devices_per_proc < 1:
        ap.error("--procs and --devices-per-proc must be >= 1")
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    sys.exit(launch(ns.procs, ns.devices_per_proc, ns.module, args))


if __name__ == "__main__":
    main()
