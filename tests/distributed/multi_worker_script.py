"""One worker of a 2-worker MultiWorkerMirroredStrategy run (driven by test_multi_worker.py).

    python multi_worker_script.py INDEX PORT0 PORT1 OUT_NPZ CKPT_DIR EPOCHS

Trains a small ResNet with a width+depth Growth on a kgrow bundle under the
strategy, with ControllerCheckpoint (resumes when CKPT_DIR holds one), and
writes the final weights to OUT_NPZ.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
index, port0, port1, out, ckpt, epochs = sys.argv[1:7]
os.environ["TF_CONFIG"] = json.dumps({
    "cluster": {"worker": [f"localhost:{port0}", f"localhost:{port1}"]},
    "task": {"type": "worker", "index": int(index)}})

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()

import kgrow  # noqa: E402
from kgrow.callbacks import Growth  # noqa: E402
from kgrow.controller import ControllerCheckpoint  # noqa: E402
from kgrow.schedules import GrowthSchedule, Stage  # noqa: E402

tf.config.experimental.enable_op_determinism()
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.integers(0, 256, size=(96, 12, 12, 1)).astype("uint8")
y = rng.integers(0, 3, 96)
bundle = kgrow.data.from_arrays((x, y), (x[:32], y[:32]), num_classes=3, batch_size=16, seed=0)
with strategy.scope():
    model = kgrow.models.get("resnet20", (12, 12, 1), 3, width=0.5)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy",
                  metrics=["accuracy"])
schedule = GrowthSchedule([Stage(0, width=0.5, depth=0.5), Stage(1, width=1.0, depth=1.0)],
                          total_epochs=3)
grow = Growth(schedule, initializer="orthogonal", depth_source="identity", verbose=0)
history = model.fit(bundle.train, epochs=int(epochs), verbose=0,
                    callbacks=[grow, ControllerCheckpoint(ckpt)])
np.savez(out, **{w.path.replace("/", "|"): w.numpy() for w in model.weights})
print(json.dumps({"worker": int(index), "events": [e["kind"] for e in grow.events],
                  "epochs_run": len(history.history["loss"]),
                  "width": history.history["grow/width"]}))
