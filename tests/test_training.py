import math

import keras
import numpy as np
import pytest

from kgrow import training


def lr_at(schedule, step):
    return float(schedule(step))


class TestWarmupCosine:
    def test_values_follow_the_formula(self):
        s = training.warmup_cosine(0.1, total_steps=110, warmup_steps=10, final_lr=0.001)
        # Warm-up: base * (step + 1) / warmup.
        assert lr_at(s, 0) == pytest.approx(0.01)
        assert lr_at(s, 4) == pytest.approx(0.05)
        assert lr_at(s, 9) == pytest.approx(0.1)
        # Cosine over the 100 remaining steps: at step 10 the peak, at the
        # middle (step 60) final + (base - final) / 2, a quarter in
        # final + (base - final) * (1 + cos(pi / 4)) / 2.
        assert lr_at(s, 10) == pytest.approx(0.1)
        assert lr_at(s, 60) == pytest.approx(0.001 + 0.099 / 2)
        assert lr_at(s, 35) == pytest.approx(
            0.001 + 0.099 * (1 + math.cos(math.pi / 4)) / 2, rel=1e-5)
        # End and beyond: the final learning rate, not rising again.
        assert lr_at(s, 110) == pytest.approx(0.001)
        assert lr_at(s, 500) == pytest.approx(0.001)

    def test_without_warmup_starts_at_peak(self):
        s = training.warmup_cosine(0.2, total_steps=4)
        values = [lr_at(s, k) for k in range(5)]
        expected = [0.2 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(5)]
        np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-7)

    def test_monotone_after_warmup(self):
        s = training.warmup_cosine(1.0, total_steps=50, warmup_steps=5)
        values = [lr_at(s, k) for k in range(5, 51)]
        assert all(a >= b for a, b in zip(values, values[1:]))

    @pytest.mark.parametrize("kwargs, message", [
        (dict(base_lr=0.0, total_steps=10), "base_lr"),
        (dict(base_lr=0.1, total_steps=0), "total_steps"),
        (dict(base_lr=0.1, total_steps=10, warmup_steps=10), "warmup_steps"),
        (dict(base_lr=0.1, total_steps=10, final_lr=0.2), "final_lr"),
    ])
    def test_rejects_bad_arguments(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            training.warmup_cosine(**kwargs)

    def test_serialization_round_trip(self):
        s = training.warmup_cosine(0.3, total_steps=20, warmup_steps=3, final_lr=0.01)
        config = keras.saving.serialize_keras_object(s)
        assert config["registered_name"] == "kgrow>WarmupCosine"
        restored = keras.saving.deserialize_keras_object(config)
        assert isinstance(restored, training.WarmupCosine)
        for step in (0, 2, 7, 19, 25):
            assert lr_at(restored, step) == pytest.approx(lr_at(s, step))

    def test_optimizer_config_round_trip(self):
        s = training.warmup_cosine(0.3, total_steps=20, warmup_steps=3)
        opt = training.make_optimizer("sgd", s)
        clone = keras.optimizers.SGD.from_config(opt.get_config())
        assert isinstance(clone._learning_rate, training.WarmupCosine)
        assert float(clone.learning_rate) == pytest.approx(lr_at(s, 0))

    def test_schedule_continues_on_a_rebuilt_optimizer(self):
        # The growth engine rebuilds the optimizer and carries the iteration
        # count; the learning rate must continue from that count.
        s = training.warmup_cosine(0.1, total_steps=20, warmup_steps=4)
        var = keras.Variable(np.ones(3, "float32"))
        first = training.make_optimizer("sgd", s)
        for _ in range(6):
            first.apply([keras.ops.ones(3)], [var])
        second = training.make_optimizer("sgd", s)
        second.build([var])
        second.iterations.assign(first.iterations)
        assert int(second.iterations) == 6
        assert float(second.learning_rate) == pytest.approx(lr_at(s, 6))


class TestMakeOptimizer:
    def test_sgd(self):
        opt = training.make_optimizer("SGD", 0.1, momentum=0.8, nesterov=True,
                                      weight_decay=1e-4)
        assert isinstance(opt, keras.optimizers.SGD)
        assert opt.momentum == pytest.approx(0.8)
        assert opt.nesterov is True
        assert opt.weight_decay == pytest.approx(1e-4)

    def test_adamw(self):
        opt = training.make_optimizer("adamw", 1e-3, weight_decay=0.05, beta_2=0.99)
        assert isinstance(opt, keras.optimizers.AdamW)
        assert opt.weight_decay == pytest.approx(0.05)
        assert opt.beta_2 == pytest.approx(0.99)

    def test_unknown_name_lists_supported(self):
        with pytest.raises(ValueError, match="Unknown optimizer 'lamb'.*sgd, adamw"):
            training.make_optimizer("lamb", 0.1)

    @pytest.mark.parametrize("kwargs", [dict(weight_decay=-1.0), dict(momentum=1.0)])
    def test_rejects_bad_hyper_parameters(self, kwargs):
        with pytest.raises(ValueError):
            training.make_optimizer("sgd", 0.1, **kwargs)

    def test_decoupled_weight_decay_and_exclusions(self):
        # Zero gradient: the only change is w -= lr * wd * w, skipped for the
        # excluded bias.
        layer = keras.layers.Dense(2, bias_initializer="ones")
        layer.build((None, 3))
        kernel0 = layer.kernel.numpy().copy()
        opt = training.make_optimizer("sgd", 0.5, momentum=0.0, weight_decay=0.1,
                                      no_decay=("bias",))
        opt.apply([keras.ops.zeros((3, 2)), keras.ops.zeros(2)], [layer.kernel, layer.bias])
        np.testing.assert_allclose(layer.kernel.numpy(), kernel0 * (1 - 0.5 * 0.1), rtol=1e-6)
        np.testing.assert_allclose(layer.bias.numpy(), np.ones(2))

    def test_sgd_decay_from_coupled(self):
        assert training.sgd_decay_from_coupled(5e-4, 0.9) == pytest.approx(5e-3)
        assert training.sgd_decay_from_coupled(1e-4, 0.0) == pytest.approx(1e-4)
        with pytest.raises(ValueError, match="momentum"):
            training.sgd_decay_from_coupled(1e-4, 1.0)


def _identity_logits_model(num_classes, activation=None):
    inputs = keras.Input((num_classes,))
    outputs = keras.layers.Dense(num_classes, activation=activation, use_bias=False,
                                 kernel_initializer="identity")(inputs)
    return keras.Model(inputs, outputs)


class TestCompileForClassification:
    def test_label_smoothing_loss_value(self):
        model = _identity_logits_model(3)
        training.compile_for_classification(
            model, training.make_optimizer("sgd", 0.1), label_smoothing=0.3)
        logits = np.array([[2.0, 0.0, 0.0]], "float32")
        labels = np.array([[1.0, 0.0, 0.0]], "float32")
        p = np.exp(logits[0]) / np.exp(logits[0]).sum()
        smoothed = labels[0] * 0.7 + 0.3 / 3
        expected = -(smoothed * np.log(p)).sum()
        loss, acc = model.evaluate(logits, labels, verbose=0)
        assert loss == pytest.approx(expected, rel=1e-5)
        assert acc == 1.0

    def test_from_logits_inferred(self):
        soft = _identity_logits_model(3, activation="softmax")
        training.compile_for_classification(soft, training.make_optimizer("sgd", 0.1))
        assert soft.loss.from_logits is False
        logits = _identity_logits_model(3)
        training.compile_for_classification(logits, training.make_optimizer("sgd", 0.1))
        assert logits.loss.from_logits is True

    def test_zoo_models_end_in_softmax_by_default(self):
        from kgrow import models
        assert training.outputs_probabilities(models.get("resnet20", (8, 8, 1), 3, width=0.25))
        assert not training.outputs_probabilities(
            models.get("resnet20", (8, 8, 1), 3, width=0.25, classifier_activation=None))

    def test_sparse_labels(self):
        model = _identity_logits_model(3)
        training.compile_for_classification(model, training.make_optimizer("sgd", 0.1),
                                            label_mode="sparse")
        _, acc = model.evaluate(np.array([[0.0, 3.0, 0.0]], "float32"), np.array([1]),
                                verbose=0)
        assert acc == 1.0

    def test_errors(self):
        model = _identity_logits_model(3)
        opt = training.make_optimizer("sgd", 0.1)
        with pytest.raises(ValueError, match="one-hot"):
            training.compile_for_classification(model, opt, 0.1, label_mode="sparse")
        with pytest.raises(ValueError, match="Unknown label_mode 'int'"):
            training.compile_for_classification(model, opt, label_mode="int")
        with pytest.raises(ValueError, match="label_smoothing"):
            training.compile_for_classification(model, opt, label_smoothing=1.0)


class TestTrainConfig:
    def test_steps_and_schedule(self):
        cfg = training.TrainConfig(lr=0.4, epochs=3, warmup_epochs=0.5, final_lr=0.01)
        assert cfg.total_steps(10) == 30
        assert cfg.warmup_steps(10) == 5
        s = training.schedule_from_config(cfg, 10)
        assert (s.base_lr, s.total_steps, s.warmup_steps, s.final_lr) == (0.4, 30, 5, 0.01)

    def test_compile_with_config_builds_the_described_optimizer(self):
        cfg = training.TrainConfig(optimizer="adamw", lr=1e-3, epochs=2, weight_decay=0.05,
                                   no_decay=("bias",), label_smoothing=0.1)
        model = training.compile_with_config(_identity_logits_model(3), cfg, steps_per_epoch=7)
        assert isinstance(model.optimizer, keras.optimizers.AdamW)
        assert model.optimizer.weight_decay == pytest.approx(0.05)
        assert model.loss.label_smoothing == pytest.approx(0.1)
        assert model.optimizer._learning_rate.total_steps == 14

    def test_to_dict_is_plain(self):
        d = training.TrainConfig(no_decay=("bias",)).to_dict()
        assert d["no_decay"] == ["bias"] and d["optimizer"] == "sgd"

    @pytest.mark.parametrize("kwargs, message", [
        (dict(optimizer="rmsprop"), "optimizer"),
        (dict(epochs=0), "epochs"),
        (dict(epochs=3, warmup_epochs=3), "warmup_epochs"),
        (dict(batch_size=0), "batch_size"),
        (dict(lr=0.1, final_lr=0.5), "final_lr"),
        (dict(label_smoothing=-0.1), "label_smoothing"),
    ])
    def test_validation(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            training.TrainConfig(**kwargs)

    def test_bad_steps_per_epoch(self):
        with pytest.raises(ValueError, match="steps_per_epoch"):
            training.TrainConfig().total_steps(0)


def _load_recipe():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "recipes" / "train_baseline.py"
    spec = importlib.util.spec_from_file_location("train_baseline_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_baseline_recipe_end_to_end(tmp_path):
    import json
    recipe = _load_recipe()
    out = tmp_path / "run"
    result = recipe.main([
        "--model", "resnet_cifar", "--model-arg", "depth=8", "--model-arg", "width=0.25",
        "--dataset", "fashion_mnist", "--subset", "256", "--batch-size", "64",
        "--epochs", "1", "--warmup", "0.5", "--lr", "0.05", "--verbose", "0",
        "--no-tensorboard", "--out", str(out)])
    saved = json.loads((out / "result.json").read_text())
    assert saved["test_acc"] == pytest.approx(result["test_acc"])
    assert 0.0 <= saved["test_acc"] <= 1.0 and saved["num_test"] == 10_000
    assert saved["num_train"] == 256
    assert saved["train"]["lr"] == 0.05 and saved["model_kwargs"] == {"depth": 8, "width": 0.25}
    assert saved["history"]["val_accuracy"][-1] == pytest.approx(saved["test_acc"])
    assert (out / "history.csv").read_text().count("\n") == 2  # header + 1 epoch


def test_baseline_recipe_needs_tensorboard_or_opt_out(tmp_path, monkeypatch):
    import importlib.util
    recipe = _load_recipe()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a))
    with pytest.raises(SystemExit, match="pip install tensorboard"):
        recipe.main(["--model", "resnet20", "--dataset", "fashion_mnist",
                     "--out", str(tmp_path)])
