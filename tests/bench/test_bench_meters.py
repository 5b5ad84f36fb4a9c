import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from kgrow import flops
from kgrow.bench import meters


def test_sample_counter_counts_partial_batches_and_size():
    counter = meters.SampleCounter()
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.zeros([10, 6, 5, 1]), tf.zeros([10]))).batch(4)
    wrapped = counter.wrap(ds)
    for _ in wrapped:
        pass
    assert counter.total() == 10 and counter.last_hw() == (6, 5)
    for _ in wrapped:  # a second pass adds up
        pass
    assert counter.total() == 20


def test_sample_counter_on_flat_inputs_counts_without_size():
    counter = meters.SampleCounter()
    for _ in counter.wrap(tf.data.Dataset.from_tensor_slices(
            (tf.zeros([7, 3]), tf.zeros([7]))).batch(3)):
        pass
    assert counter.total() == 7 and counter.last_hw() == (0, 0)


@pytest.mark.parametrize("kernel", [True, False])
def test_peak_memory_sees_a_large_allocation(kernel):
    with meters.PeakMemory(interval_s=0.005, use_kernel_peak=kernel) as mem:
        block = np.ones(200 * 2**20 // 8)  # 200 MB, touched
        time.sleep(0.05)
        del block
    assert mem.peak_mb - mem.start_mb > 150
    if not kernel:
        assert mem.source != "proc_vmhwm_reset"
    with pytest.raises(ValueError, match="interval_s"):
        meters.PeakMemory(interval_s=0)


@pytest.mark.skipif(meters._reset_hwm() is None, reason="needs Linux' /proc/self/clear_refs")
def test_kernel_peak_is_per_block_and_nests():
    big = np.ones(300 * 2**20 // 8)  # a peak before the blocks must not count
    del big
    with meters.PeakMemory() as outer:
        assert outer.source == "proc_vmhwm_reset"
        assert "kgrow-peak-memory" not in [t.name for t in threading.enumerate()]
        with meters.PeakMemory() as inner:
            block = np.ones(150 * 2**20 // 8)
            del block
        with meters.PeakMemory() as quiet:
            pass
    assert outer.peak_mb - outer.start_mb < 250  # not the 300 MB from before
    assert inner.peak_mb - inner.start_mb > 120
    assert outer.peak_mb >= inner.peak_mb  # the inner reset did not lose it
    assert quiet.peak_mb - quiet.start_mb < 50


def test_architecture_key_tracks_shape_trainable_and_sparsity():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
    key = meters.architecture_key(model, (4,))
    assert meters.architecture_key(model, (4,)) == key
    assert meters.architecture_key(model, (5,)) != key
    assert meters.architecture_key(model, (4,), {"d": 0.5}) != key
    mask = np.array([[1, 0, 0]] * 4)
    assert (meters.architecture_key(model, (4,), {"d/kernel": mask})
            == meters.architecture_key(model, (4,), {"d/kernel": mask.copy()}))
    assert (meters.architecture_key(model, (4,), {"d/kernel": mask})
            != meters.architecture_key(model, (4,), {"d/kernel": np.ones((4, 3))}))
    model.layers[0].trainable = False
    assert meters.architecture_key(model, (4,)) != key


class _FreezeFirstAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.get_layer("conv").trainable = False
            self.model.make_train_function(force=True)


def test_flops_meter_and_clock_account_each_epoch():
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(2, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    model.compile("sgd", "mse")
    dense_flops = flops.count(model, (6, 6, 1)).training
    model.get_layer("conv").trainable = False
    frozen_flops = flops.count(model, (6, 6, 1)).training
    model.get_layer("conv").trainable = True
    assert frozen_flops < dense_flops

    ds = tf.data.Dataset.from_tensor_slices(
        (tf.random.normal([10, 6, 6, 1]), tf.zeros([10, 2]))).batch(4)
    counter = meters.SampleCounter()
    clock = meters.RunClock()
    meter = meters.FlopsMeter(counter, lambda: (6, 6, 1), clock=clock)
    history = model.fit(counter.wrap(ds), epochs=3, validation_data=ds, verbose=0,
                        shuffle=False, callbacks=[clock.head, _FreezeFirstAt(1), meter,
                                                  clock.tail])
    assert [e["samples"] for e in meter.epochs] == [10, 10, 10]
    assert history.history["kgrow/train_flops"] == pytest.approx(
        [10 * dense_flops, 10 * dense_flops + 10 * frozen_flops, meter.total()])
    assert [e["flops_per_sample"] for e in meter.epochs] == pytest.approx(
        [dense_flops, frozen_flops, frozen_flops])
    assert meter.total() == pytest.approx(10 * dense_flops + 20 * frozen_flops)
    assert meter.notes == []
    assert len(clock.epoch_walls) == 3 and clock.eval_s > 0
    assert clock.epoch_walls == sorted(clock.epoch_walls)
    assert clock.elapsed() >= clock.epoch_walls[-1]


def test_flops_meter_recounts_when_the_pipeline_size_differs():
    inputs = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(2, 3, padding="same", name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    model.compile("sgd", "mse")
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.zeros([4, 8, 8, 1]), tf.zeros([4, 2]))).batch(4)
    counter = meters.SampleCounter()
    meter = meters.FlopsMeter(counter, lambda: (6, 6, 1))  # claims 6x6, delivers 8x8
    model.fit(counter.wrap(ds), epochs=1, verbose=0, shuffle=False, callbacks=[meter])
    assert meter.epochs[0]["input_shape"] == [8, 8, 1]
    assert meter.epochs[0]["flops_per_sample"] == pytest.approx(
        flops.count(model, (8, 8, 1)).training)
    assert len(meter.notes) == 1 and "re-counted" in meter.notes[0]


def test_clock_requires_head():
    with pytest.raises(RuntimeError, match="clock.head"):
        meters.RunClock().elapsed()
