"""Several MultiWorkerMirroredStrategy workers of one command, on this machine.

`kgrow bench --local-workers N ...` (and every recipe, which shares the bench
flags) starts N copies of the command it was given, each with its own
`TF_CONFIG` naming all N on free localhost ports, and trains under
MultiWorkerMirroredStrategy: the way to try, test and measure a multi-worker
run before taking it to several machines (where each machine starts the
command itself with its `TF_CONFIG`; README "Several machines").

Each worker gets its share of the machine's cores: TensorFlow's thread pools
sized to it (`worker_threads`) and, where the OS allows, pinned to it
(`worker_cores`; `KGROW_PIN_WORKERS=0` leaves placement to the OS). The
chief (worker 0) prints to this terminal and writes the results; worker
`i`'s output goes to `worker<i>.log` in the output directory. When a worker
fails the others are stopped (a collective would wait for it forever) and its
log's end is shown.

Example (a small 2-worker run; each process is a full TensorFlow):
    kgrow bench --profile quick --methods grow_width --local-workers 2 --out runs/mw
"""
from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence, TextIO

#: Set in every worker a launch starts (its index), so it trains instead of launching.
WORKER_ENV = "KGROW_LOCAL_WORKER"


def is_launched_worker() -> bool:
    """Whether this process is one of the workers `launch_local_workers` started."""
    return WORKER_ENV in os.environ


def this_command(argv: Sequence[str] | None = None) -> list[str]:
    """The command line that started this process, to start it again.

    `python -m package ...` is restarted with `-m` (running the package's
    `__main__.py` as a script would put the package folder first on the
    import path); a script or console entry point is restarted by path.
    """
    argv = list(sys.argv if argv is None else argv)
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        module = spec.name[:-len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return [sys.executable, "-m", module, *argv[1:]]
    return [sys.executable, *argv]


def local_tf_configs(num_workers: int = 2) -> list[str]:
    """`TF_CONFIG` values for `num_workers` workers on this machine, on free ports.

    For trying MultiWorkerMirroredStrategy on one machine (`kgrow bench
    --local-workers N` and the tests start their workers this way): start
    worker `i` with `TF_CONFIG=local_tf_configs(n)[i]`.

    Example:
        >>> import json
        >>> [json.loads(c)["task"] for c in local_tf_configs(2)]
        [{'type': 'worker', 'index': 0}, {'type': 'worker', 'index': 1}]
    """
    socks = [socket.socket() for _ in range(int(num_workers))]
    try:
        for s in socks:
            s.bind(("localhost", 0))
        workers = [f"localhost:{s.getsockname()[1]}" for s in socks]
    finally:
        for s in socks:
            s.close()
    return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
            for i in range(len(workers))]


def worker_threads(num_workers: int) -> dict[str, str]:
    """TensorFlow's thread-pool sizes for each of `num_workers` workers on this machine.

    Every TensorFlow process sizes its pools to all the machine's cores, so N
    local workers would run N times more busy threads than there are cores.
    Each worker gets its share of the cores instead, as `torchrun` does with
    OMP_NUM_THREADS. Values already in the environment are kept; each worker
    also runs on cores of its own (`worker_cores`).

    Example:
        >>> import os
        >>> share = worker_threads(os.cpu_count() or 1)
        >>> int(share["TF_NUM_INTRAOP_THREADS"]) >= 1
        True
    """
    share = str(max(1, (os.cpu_count() or 1) // int(num_workers)))
    names = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")
    return {name: os.environ.get(name, share) for name in names}


def worker_cores(num_workers: int) -> list[set[int]] | None:
    """Which of this process's cores each worker runs on, or None where it cannot be set.

    Workers on cores of their own do not take turns on one core, so a method
    and its baseline are timed under the same placement. Pinned, full-width
    ResNet-20 under plain Keras took 206-223 ms per step in every epoch after
    the first (2 workers on 2 cores, 12 epochs, 2 seeds). Earlier, unpinned
    runs had switched between 236-292 ms and 426-673 ms per step from one
    epoch to the next; those slow epochs included the input iterator's
    teardown stall fixed since (`kgrow.data.pipeline`), and unpinned
    placement was not timed again after the fix.
    """
    if not hasattr(os, "sched_getaffinity"):
        return None
    mine = sorted(os.sched_getaffinity(0))
    share = len(mine) // int(num_workers)
    if share < 1:
        return None
    return [set(mine[i * share:(i + 1) * share]) for i in range(int(num_workers))]


def launch_local_workers(num_workers: int, command: Sequence[str], log_dir: str,
                         out: TextIO | None = None, poll_s: float = 0.5) -> int:
    """Runs `command` as `num_workers` MultiWorkerMirroredStrategy workers on localhost.

    Args:
        num_workers: Number of worker processes (>= 2).
        command: The full command (`this_command()`); every worker runs it
            with `TF_CONFIG` and `KGROW_LOCAL_WORKER` set.
        log_dir: Where `worker<i>.log` of workers 1.. go (created).
        out: Where the chief's output goes (default: this process's stdout).
        poll_s: How often the workers are checked.

    Returns:
        0 when every worker finished cleanly, else the first failure's exit
        status.

    Raises:
        ValueError: fewer than 2 workers.
    """
    out = sys.stdout if out is None else out
    if int(num_workers) != num_workers or num_workers < 2:
        raise ValueError(f"--local-workers needs at least 2 workers, got {num_workers!r} "
                         f"(one worker is a plain run: leave the flag out).")
    os.makedirs(log_dir, exist_ok=True)
    threads = worker_threads(num_workers)
    cores = worker_cores(num_workers) if os.environ.get("KGROW_PIN_WORKERS", "1") != "0" else None
    logs = [None] + [os.path.join(log_dir, f"worker{i}.log") for i in range(1, num_workers)]
    procs, files = [], []
    placed = (f"pinned to cores {', '.join(str(sorted(c)) for c in cores)}" if cores
              else "placed by the OS")
    print(f"[kgrow] starting {num_workers} local workers (MultiWorkerMirroredStrategy), "
          f"{', '.join(f'{k}={v}' for k, v in threads.items())} each, {placed}; worker 0 "
          f"prints here, the others to {', '.join(logs[1:])}", file=out, flush=True)
    try:
        for i, config in enumerate(local_tf_configs(num_workers)):
            env = dict(os.environ, TF_CONFIG=config, PYTHONUNBUFFERED="1", **threads,
                       **{WORKER_ENV: str(i)})
            pin = functools.partial(os.sched_setaffinity, 0, cores[i]) if cores else None
            if i == 0:
                proc = subprocess.Popen(list(command), env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, bufsize=1,
                                        preexec_fn=pin)
            else:
                files.append(open(logs[i], "w", encoding="utf-8"))
                proc = subprocess.Popen(list(command), env=env, stdout=files[-1],
                                        stderr=subprocess.STDOUT, preexec_fn=pin)
            procs.append(proc)
        return _wait(procs, logs, out, poll_s)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for f in files:
            f.close()


def _wait(procs, logs, out, poll_s) -> int:
    chief = procs[0]

    def relay():  # the chief's lines, as they come
        for line in chief.stdout:
            out.write(line)
            out.flush()
    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    while True:
        codes = [p.poll() for p in procs]
        failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            index, code = failed[0]
            reader.join(timeout=5)
            print(f"[kgrow] worker {index} exited with status {code}; stopping the others.",
                  file=out, flush=True)
            if logs[index]:
                with open(logs[index], encoding="utf-8", errors="replace") as f:
                    tail = f.read()[-3000:]
                print(f"--- end of {logs[index]} ---\n{tail}", file=out, flush=True)
            return int(code)
        if all(c == 0 for c in codes):
            reader.join(timeout=30)
            return 0
        time.sleep(poll_s)
