"""A bundle built with elastic_batch=True follows its selection's live batch size."""
import numpy as np
import pytest

import kgrow
from kgrow.data import LiveSelection


def _bundle(n=48, batch_size=8, **kwargs):
    x = np.random.default_rng(0).integers(0, 256, (n, 4, 4, 1)).astype(np.uint8)
    return kgrow.data.from_arrays((x, np.arange(n) % 3), None, num_classes=3,
                                  batch_size=batch_size, label_mode="sparse", **kwargs)


def _pass(dataset):
    return [int(batch[0].shape[0]) for batch in dataset]


def test_live_batch_size_changes_batches_and_epoch_length():
    bundle = _bundle(elastic_batch=True)
    assert _pass(bundle.train) == [8] * 6 and len(bundle.train) == 6
    bundle.selection.set_batch_size(16)
    assert len(bundle.train) == bundle.steps_per_epoch == 3
    assert _pass(bundle.train) == [16] * 3
    assert _pass(bundle.train_with_ids()) == [16] * 3
    bundle.selection.set_active(np.arange(40))  # 40 // 16: the remainder is dropped
    assert len(bundle.train) == 2 and _pass(bundle.train) == [16, 16]
    bundle.selection.set_batch_size(None)
    assert _pass(bundle.train) == [8] * 5
    assert bundle.train.bundle_batch_size == 8
    # The training batches leave their size open in the spec.
    assert tuple(bundle.train.element_spec[0].shape)[0] is None


def test_every_sample_once_per_pass_at_any_batch_size():
    bundle = _bundle(elastic_batch=True)
    for size in (8, 12, 24):
        bundle.selection.set_batch_size(size)
        ids = np.concatenate([b[2]["sample_ids"].numpy() for b in bundle.train_with_ids()])
        assert sorted(ids.tolist()) == list(range(48))


def test_mid_pass_resume_skips_whole_live_batches():
    bundle = _bundle(elastic_batch=True)
    bundle.selection.set_batch_size(16)
    bundle.selection.set_epoch(3)
    full = [b[2]["sample_ids"].numpy().tolist() for b in bundle.train_with_ids()]
    state = bundle.selection.get_state()
    assert state["batch_size"] == 16
    other = _bundle(elastic_batch=True)
    other.selection.set_state(state)  # the state saved after pass 3 started
    other.selection.resume_pass(1)
    rest = [b[2]["sample_ids"].numpy().tolist() for b in other.train_with_ids()]
    assert rest == full[1:]


def test_fixed_bundles_refuse_a_live_batch_size():
    fixed = _bundle()
    assert tuple(fixed.train.element_spec[0].shape)[0] == 8
    with pytest.raises(ValueError, match="elastic_batch=True"):
        fixed.selection.set_batch_size(16)
    fixed.selection.set_batch_size(8)  # its own size is fine
    with pytest.raises(ValueError, match="needs its own selection"):
        _bundle(selection=fixed.selection, elastic_batch=True)
    live = LiveSelection(48)
    live.set_batch_size(16)
    with pytest.raises(ValueError, match="live batch size"):
        _bundle(selection=live)
    elastic = _bundle(elastic_batch=True)
    with pytest.raises(ValueError, match="larger than the 48 active"):
        elastic.selection.set_batch_size(64)
    with pytest.raises(ValueError, match="positive integer"):
        elastic.selection.set_batch_size(0)
    elastic.selection.set_batch_size(24)
    with pytest.raises(ValueError, match="fewer than the minimum of 24"):
        elastic.selection.set_active(np.arange(20))
    with pytest.raises(ValueError, match="elastic_batch must be True or False"):
        _bundle(elastic_batch="yes")
