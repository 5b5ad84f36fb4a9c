"""The python code blocks of README.md and docs/methods/*.md run as written.

Each document's blocks run in order, in a fresh process (a fresh Keras
session), in an empty working directory. Only the data size and epoch counts
are shrunk so the suite stays fast: `SHRINK` lists every substitution; the
calls, imports and callbacks are the documents' own.
"""
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs/methods").glob("*.md"))

# (pattern, replacement): the long settings a reader would use, shortened.
SHRINK = [
    (r"subset=10_000", "subset=256"),                      # 2 steps of 128 per epoch
    (r"validation_data=bundle\.test\b", "validation_data=bundle.test.take(2)"),
    (r"bundle\.test_at_live_size\(\)", "bundle.test_at_live_size().take(2)"),
]
# Blocks whose epoch counts are free (no stage pinned to an epoch) also get fewer epochs.
EPOCHS = (r"\b(total_)?epochs=(\d+)", lambda m: f"{m.group(1) or ''}epochs={min(int(m.group(2)), 4)}")
PINNED_STAGES = re.compile(r"Stage\(\d+,")


def blocks(doc: str) -> list:
    return re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), re.S)


def shrink(code: str) -> str:
    for pattern, replacement in SHRINK:
        code = re.sub(pattern, replacement, code)
    if not PINNED_STAGES.search(code):
        code = re.sub(EPOCHS[0], EPOCHS[1], code)
    return code


def test_every_document_has_python_examples():
    assert "README.md" in DOCS and len(DOCS) >= 2
    assert all(blocks(doc) for doc in DOCS), [doc for doc in DOCS if not blocks(doc)]


# Slow (the longest document, ~75 s): autoprog.md's Prog and AutoProg examples are the
# flows test_autoprog.py and test_autoprog_search.py run (fit with a checkpoint across
# resolution and depth growth; search, recycling, logs and a replay of the schedule file).
SLOW_DOCS = {"docs/methods/autoprog.md"}


@pytest.mark.parametrize("doc", [pytest.param(d, marks=pytest.mark.slow) if d in SLOW_DOCS
                                 else d for d in DOCS])
def test_document_examples_run(doc, tmp_path):
    script = "\n".join(shrink(b) for b in blocks(doc))
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{doc} examples failed:\n{result.stderr[-4000:]}"
    if doc == "README.md":  # the growth example's logger and checkpoint really wrote
        assert (tmp_path / "log.csv").read_text().count("\n") == 13  # header + 12 epochs
        assert (tmp_path / "runs" / "ckpt").is_dir()
