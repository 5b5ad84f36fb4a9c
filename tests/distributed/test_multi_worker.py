"""kgrow under MultiWorkerMirroredStrategy: 2 worker processes on localhost (TF_CONFIG).

Each run starts both workers of `multi_worker_script.py`; the workers must end
with bitwise-equal weights (gradients are all-reduced; BatchNorm moving
statistics are averaged by the controller at each epoch end), take the same
growth, freezing, mask, sieving and search decisions, let only the chief
write checkpoints, and a worker group restarted on a checkpoint must end
where an uninterrupted group ends. The sieved data is dealt out to the
workers without losing or repeating a sample.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from kgrow.bench.launch import local_tf_configs

SCRIPT = pathlib.Path(__file__).with_name("multi_worker_script.py")
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run_group(tmp_path, tag, ckpt, epochs, scenario="growth"):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    procs = [subprocess.Popen(
        [sys.executable, str(SCRIPT), str(tmp_path / f"{tag}_w{i}.npz"), str(ckpt),
         str(epochs), scenario],
        env=dict(env, TF_CONFIG=config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i, config in enumerate(local_tf_configs(2))]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    weights = [dict(np.load(tmp_path / f"{tag}_w{i}.npz")) for i in (0, 1)]
    return results, weights


def _max_diff(a, b):
    assert sorted(a) == sorted(b)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def _growth_group(tmp_path, ckpt):
    results, weights = _run_group(tmp_path, "full", ckpt, epochs=3)
    a, b = (r["growth"] for r in results)
    assert a["events"] == b["events"] == ["shrink-to-start", "grow"]
    assert a["width"] == b["width"] == [0.5, 1.0, 1.0]
    assert _max_diff(*weights) == 0.0  # BN moving statistics included
    names = sorted(p.name for p in ckpt.iterdir() if p.name.startswith("ckpt-"))
    assert [n[:11] for n in names] == ["ckpt-000002", "ckpt-000003"]  # one writer
    return weights, names


def test_growth_under_two_workers_is_identical_on_both(tmp_path):
    _growth_group(tmp_path, tmp_path / "ckpt")


# Slow (a second worker group): the restart. Resume across a growth is covered on one
# machine by the README path's kill -9 tests and the component matrix.
@pytest.mark.slow
def test_growth_under_two_workers_resumes_where_the_group_stopped(tmp_path):
    ckpt = tmp_path / "ckpt"
    weights, names = _growth_group(tmp_path, ckpt)
    # As if the group died before its last checkpoint: restart with the same command.
    (ckpt / names[1]).rename(tmp_path / "dropped")
    (ckpt / "latest").write_text(names[0] + "\n")
    results, resumed = _run_group(tmp_path, "resumed", ckpt, epochs=3)
    assert [r["growth"]["epochs_run"] for r in results] == [1, 1]
    assert _max_diff(*resumed) == 0.0
    assert _max_diff(resumed[0], weights[0]) <= 1e-6


# One worker group runs both scenarios, one after the other (a group start costs
# two TensorFlow imports and the collective setup).
def test_sparse_freezing_sieving_and_the_autoprog_search_decide_alike_on_two_workers(
        tmp_path):
    results, weights = _run_group(tmp_path, "both", tmp_path / "ckpt", epochs=4,
                                  scenario="spfde+autoprog")
    assert _max_diff(*weights) == 0.0  # both models, masks included
    assert any(k.startswith("spfde|mask|") for k in weights[0])
    assert any(k.startswith("autoprog|") for k in weights[0])

    a, b = (r["spfde"] for r in results)
    for key in ("frozen", "freeze_events", "mask_events", "queue", "active", "forgets"):
        assert a[key] == b[key], key
    assert a["frozen"] and a["freeze_events"]  # something froze
    assert [k for _, k, _ in a["mask_events"]].count("update") >= 2
    assert sum(a["forgets"]) > 0  # counted from the step's predictions
    # Every worker counted every sample: both trackers hold the same counts
    # (above), and the sieved set was dealt out in halves, each active sample
    # once per pass, none of the queue.
    assert sorted(a["seen"] + b["seen"]) == a["active"]
    assert a["seen"] and b["seen"] and not set(a["seen"]) & set(b["seen"])

    # AutoProg's search with measured step times: the workers' own timings,
    # averaged, give the same choice on both.
    a, b = (r["autoprog"] for r in results)
    assert a["chosen"] == b["chosen"] and a["chosen"]
    assert a["times"] == b["times"]
