"""Smoke run: width growth of a half-width ResNet-20 under a dtype policy, Fashion-MNIST.

    python benchmarks/mixed_precision_smoke.py mixed_bfloat16   # or mixed_float16, float32

Two epochs on 2,000 training images (width 0.5 -> 1 at epoch 1); prints the train losses
and the test accuracy. A check that the run works end to end, not a benchmark.
"""
import sys
import time

import keras

import kgrow
from kgrow.callbacks import Growth
from kgrow.schedules import GrowthSchedule


def main(policy: str) -> None:
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    bundle = kgrow.data.load("fashion_mnist", batch_size=128, subset=2000, seed=0)
    model = kgrow.models.get("resnet20", (28, 28, 1), 10, width=0.5)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy",
                  metrics=["accuracy"])
    start = time.time()
    schedule = GrowthSchedule.linear(total_epochs=2, num_stages=2, start=0.5)
    history = model.fit(bundle.train, epochs=2, verbose=0,
                        callbacks=[Growth(schedule, initializer="orthogonal", verbose=0)])
    _, accuracy = model.evaluate(bundle.test, verbose=0)
    print(f"{policy} {type(model.optimizer).__name__} train loss "
          f"{[round(v, 4) for v in history.history['loss']]} grow/width "
          f"{history.history['grow/width']} test acc {accuracy:.4f} "
          f"wall {time.time() - start:.1f}s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "mixed_bfloat16")
