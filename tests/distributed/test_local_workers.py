"""`kgrow bench --local-workers N`: N MultiWorkerMirroredStrategy workers of one command."""
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

import pytest

from kgrow.bench import launch

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _readme_command():
    # The README's own example, run as written; only the data and epochs are shrunk.
    lines = [line for line in (ROOT / "README.md").read_text().splitlines()
             if line.startswith("kgrow bench") and "--local-workers 2" in line]
    assert len(lines) == 1, lines
    words = shlex.split(lines[0])
    assert words[words.index("--out") + 1] == "runs/mw"
    return [sys.executable, "-m", "kgrow", *words[1:], "--subset", "512", "--test-subset", "512",
            "--epochs", "2", "--verbose", "0"]


# Slow (90 s on 2 cores): two full bench processes. Growth, AutoProg and SpFDE under
# two workers are in test_multi_worker.py, the launcher's own logic below.
@pytest.mark.slow
def test_bench_runs_as_two_local_workers_and_only_the_chief_writes(tmp_path):
    out = tmp_path / "runs" / "mw"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop(launch.WORKER_ENV, None)
    proc = subprocess.run(_readme_command(), env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "starting 2 local workers" in proc.stdout
    assert proc.stdout.count("[kgrow bench] done in") == 1  # the chief's lines, relayed once
    results = json.loads((out / "results.json").read_text())
    # TensorFlow's class behind tf.distribute.MultiWorkerMirroredStrategy.
    assert results["environment"]["distribute"] == {"strategy": "CollectiveAllReduceStrategy",
                                                    "replicas": 2}
    # Both workers trained the global batch split in two: 512 samples (4 steps of 128)
    # per epoch, for the 2 epochs.
    assert results["runs"]["baseline"]["per_seed"][0]["samples_seen"] == 2 * 512
    assert "the chief worker writes the results" in (out / "worker1.log").read_text()


def test_a_failing_worker_stops_the_group_and_shows_its_log(tmp_path, capsys):
    # Worker 1 fails at once; worker 0 would wait on it forever (as in a collective).
    script = ("import os, sys, time\n"
              "if os.environ['KGROW_LOCAL_WORKER'] == '1':\n"
              "    print('worker one broke'); sys.exit(3)\n"
              "time.sleep(120)\n")
    started = time.perf_counter()
    code = launch.launch_local_workers(2, [sys.executable, "-c", script], str(tmp_path),
                                       poll_s=0.1)
    assert code == 3 and time.perf_counter() - started < 60
    shown = capsys.readouterr().out
    assert "worker 1 exited with status 3" in shown and "worker one broke" in shown


def test_this_command_restarts_a_module_with_dash_m(monkeypatch):
    import types
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="kgrow.__main__")
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert launch.this_command(["/x/kgrow/__main__.py", "bench", "--out", "d"]) == [
        sys.executable, "-m", "kgrow", "bench", "--out", "d"]
    main.__spec__ = None
    assert launch.this_command(["recipes/combined.py", "--out", "d"]) == [
        sys.executable, "recipes/combined.py", "--out", "d"]
