"""Train any kgrow zoo model on any kgrow dataset with a plain `model.fit`.

The reference run every kgrow method is compared with. Writes into `--out`:
TensorBoard logs (`tensorboard/`, needs the `tensorboard` package), per-epoch
CSV (`history.csv`) and the final test metrics with the full configuration
(`result.json`).

Example (about 3 minutes on 2 CPU cores):
    python recipes/train_baseline.py --model resnet20 --model-arg width=0.5 \
        --dataset fashion_mnist --subset 10000 --epochs 3 --out runs/baseline
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from kgrow import data, models, training  # noqa: E402
from kgrow.bench.cli import parse_image_size, parse_model_arg  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="kgrow.models name, e.g. resnet20")
    p.add_argument("--model-arg", action="append", type=parse_model_arg, default=[],
                   metavar="NAME=VALUE", help="model builder argument, repeatable")
    p.add_argument("--dataset", required=True, help="kgrow.data name, e.g. fashion_mnist")
    p.add_argument("--data-dir", help="directory kgrow.data reads the dataset from")
    p.add_argument("--image-size", type=parse_image_size,
                   help="resize images, e.g. 32 or 32x32")
    p.add_argument("--subset", type=int, help="use this many training samples")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", choices=training.OPTIMIZERS, default="sgd")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    p.add_argument("--final-lr", type=float, default=0.0)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--warmup", type=float, default=0.0, help="warm-up epochs")
    p.add_argument("--wd", type=float, default=5e-4, help="decoupled weight decay")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--augment", help="kgrow.data augmentation preset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1)
    p.add_argument("--save-model", action="store_true", help="also save model.keras")
    p.add_argument("--no-tensorboard", action="store_true",
                   help="skip the TensorBoard logs (they need the tensorboard package)")
    p.add_argument("--out", required=True, help="output directory")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not args.no_tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise SystemExit("TensorBoard logging needs the tensorboard package: "
                         "pip install tensorboard, or pass --no-tensorboard.")
    config = training.TrainConfig(
        optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
        warmup_epochs=args.warmup, final_lr=args.final_lr, weight_decay=args.wd,
        momentum=args.momentum, nesterov=args.nesterov,
        label_smoothing=args.label_smoothing, augment=args.augment, seed=args.seed)
    keras.utils.set_random_seed(config.seed)
    bundle = data.load(args.dataset, batch_size=config.batch_size, image_size=args.image_size,
                       augment=config.augment, subset=args.subset, seed=config.seed,
                       data_dir=args.data_dir, label_mode="onehot")
    model = models.get(args.model, bundle.info.image_shape, bundle.info.num_classes,
                       **dict(args.model_arg))
    training.compile_with_config(model, config, bundle.steps_per_epoch,
                                 label_mode=bundle.info.label_mode)

    os.makedirs(args.out, exist_ok=True)
    callbacks = [keras.callbacks.CSVLogger(os.path.join(args.out, "history.csv"))]
    if not args.no_tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(args.out, "tensorboard")))
    start = time.perf_counter()
    with warnings.catch_warnings():
        # One epoch is one finite pass of unknown length; Keras calls that
        # running out of data.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        history = model.fit(bundle.train, epochs=config.epochs, validation_data=bundle.test,
                            callbacks=callbacks, verbose=args.verbose,
                            shuffle=False)  # the pipeline reshuffles every epoch itself
    fit_s = time.perf_counter() - start
    test_loss, test_acc = model.evaluate(bundle.test, verbose=0)

    result = {
        "model": args.model, "model_kwargs": dict(args.model_arg), "dataset": args.dataset,
        "subset": args.subset, "image_size": args.image_size, "train": config.to_dict(),
        "num_train": bundle.info.num_train, "num_test": bundle.info.num_test,
        "params": int(model.count_params()), "fit_wall_s_incl_eval": fit_s,
        "test_loss": float(test_loss), "test_acc": float(test_acc),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
    }
    with open(os.path.join(args.out, "result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    if args.save_model:
        model.save(os.path.join(args.out, "model.keras"))
    print(f"test accuracy {100 * test_acc:.2f}% (loss {test_loss:.4f}) after "
          f"{config.epochs} epochs, {fit_s:.0f} s; wrote {args.out}/result.json")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
