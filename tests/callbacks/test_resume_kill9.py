"""Real processes: the README growth path, SIGKILLed at chosen points and started
again with the same command, ends bitwise equal to a run never interrupted."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from kgrow.controller import checkpoint as ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "callbacks", "readme_resume_script.py")


def run_script(directory, out, kill=None, marker=None):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KGROW_TEST_KILL", None)
    if kill:
        env.update(KGROW_TEST_KILL=kill, KGROW_TEST_KILL_MARKER=str(marker))
    proc = subprocess.run([sys.executable, SCRIPT, str(directory), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    return proc


def max_diff(a_path, b_path):
    with np.load(a_path) as a, np.load(b_path) as b:
        assert sorted(a.files) == sorted(b.files)
        return max(float(np.abs(a[k] - b[k]).max()) for k in a.files)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("reference")
    proc = run_script(d / "ckpt", d / "weights.npz")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d / "weights.npz"


def test_readme_path_raises_no_false_alarm(reference):
    caught = json.loads(open(str(reference) + ".warnings.json").read())
    assert not [m for m in caught if "ran out of data" in m or "shuffle=True" in m], caught


@pytest.mark.parametrize("kill", ["mid_epoch", "after_growth", "during_write"])
def test_kill9_and_restart_equals_uninterrupted_run(tmp_path, reference, kill):
    directory, out, marker = tmp_path / "ckpt", tmp_path / "weights.npz", tmp_path / "killed"
    killed = run_script(directory, out, kill=kill, marker=marker)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert marker.exists() and not out.exists()
    saved = os.path.basename(ckpt.latest_checkpoint(str(directory)))
    if kill == "during_write":
        # The half-written checkpoint 2 is a temporary; `latest` names checkpoint 1.
        assert [n for n in os.listdir(directory) if n.startswith(".tmp-")]
        assert saved.startswith("ckpt-000001-")
        assert ckpt.read_checkpoint(str(directory))["epoch"] == 1
    else:
        assert saved.startswith("ckpt-000002-" if kill == "mid_epoch" else "ckpt-000001-")
    resumed = run_script(directory, out, kill=kill, marker=marker)  # the same command
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert max_diff(reference, out) == 0.0
    caught = json.loads(open(str(out) + ".warnings.json").read())
    assert not [m for m in caught if "ran out of data" in m or "replay" in m], caught
