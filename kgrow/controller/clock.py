"""`EpochClock`: where a controlled run is, in epochs, for learning-rate schedules.

A learning-rate schedule written in optimizer steps (Keras' convention: it
is called with `optimizer.iterations`) assumes every epoch has the same
number of steps. Methods that change what an epoch is break that: data
sieving trains on fewer samples per epoch, a larger batch makes fewer steps.
A cosine over `epochs * steps_per_epoch` steps then never reaches its end
(sieving a quarter of the data leaves the last learning rate at 15% of the
peak instead of 0), and the decay no longer lines up with the epochs the
methods' own schedules are written in.

The clock holds three host integers: the epoch, the steps done in it and
the steps it has. A schedule that follows it (`kgrow.training.WarmupCosine`
with `steps_per_epoch`) reads ``position(steps_per_epoch)`` =
``(epoch + done / steps) * steps_per_epoch`` instead of the optimizer step:
the step an epoch of the planned length would be at. With epochs of the
planned length it equals the optimizer step exactly (the same float32
value), so nothing changes for runs that keep their epochs.

The controller sets the epoch at every epoch begin (from the epoch's live
length and, after a mid-epoch resume, the steps already done) and advances
``done`` once per training step (a post-update hook), so no clock state needs
checkpointing. The variables live on the host CPU outside any strategy,
like `kgrow.data.LiveSelection`'s.

Example:
    >>> clock = EpochClock()
    >>> clock.start_epoch(2, steps=50)            # a sieved epoch: 50 steps, not 100
    >>> for _ in range(25):
    ...     _ = clock.advance()
    >>> float(clock.position(100))                # halfway through epoch 2 of 100 steps
    250.0
"""
from __future__ import annotations

import tensorflow as tf

from kgrow.data.selection import _host_variable

__all__ = ["EpochClock"]


class EpochClock:
    """The run's position: epoch, steps done in it and steps it has (host variables)."""

    def __init__(self):
        self.epoch = _host_variable(tf.constant(0, tf.int64), tf.int64, "kgrow_clock_epoch")
        self.done = _host_variable(tf.constant(0, tf.int64), tf.int64, "kgrow_clock_done")
        self.steps = _host_variable(tf.constant(1, tf.int64), tf.int64, "kgrow_clock_steps")

    def start_epoch(self, epoch: int, steps: int, done: int = 0) -> None:
        """Epoch `epoch` has `steps` steps in all, of which `done` already ran (a resume)."""
        self.epoch.assign(int(epoch))
        self.steps.assign(max(int(steps), 1))
        self.done.assign(int(done))

    def advance(self):
        """One training step done (traced into the train step)."""
        return self.done.assign_add(1)

    def position(self, steps_per_epoch):
        """``(epoch + done / steps) * steps_per_epoch`` as float32 (a tensor)."""
        per_epoch = float(steps_per_epoch)
        epoch = tf.cast(self.epoch.read_value(), tf.float32)
        done = tf.cast(self.done.read_value(), tf.float32)
        steps = tf.cast(self.steps.read_value(), tf.float32)
        # done * (S / n) is exactly `done` when the epoch has its planned S steps.
        return epoch * per_epoch + done * (per_epoch / steps)

    def __repr__(self):
        return (f"EpochClock(epoch={int(self.epoch.numpy())}, done={int(self.done.numpy())}, "
                f"steps={int(self.steps.numpy())})")
