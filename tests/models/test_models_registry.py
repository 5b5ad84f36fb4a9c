"""kgrow.models.get / available / register."""
import pytest

from kgrow import models
from kgrow.models import registry


def test_available_lists_the_contract_names():
    names = models.available()
    for name in ("resnet20", "resnet32", "resnet56", "resnet110", "resnet50", "resnet101",
                 "vit_tiny", "vit_small", "vit_base", "vit"):
        assert name in names
    assert names == sorted(names)
    assert set(models.available(details=True)) == set(names)


def test_unknown_name_lists_supported_and_suggests():
    with pytest.raises(ValueError, match=r"Did you mean \[[^]]*'resnet20'") as info:
        models.get("resnet21", (32, 32, 3), 10)
    assert "vit_tiny" in str(info.value)


def test_unknown_kwarg_lists_accepted_ones():
    with pytest.raises(ValueError, match=r"does not accept \['wdith'\].*'widen'"):
        models.get("resnet20", (32, 32, 3), 10, wdith=2)
    with pytest.raises(ValueError, match=r"does not accept \['widen'\].*'stem'"):
        models.get("resnet50", (32, 32, 3), 10, widen=2)


def test_fixed_kwargs_cannot_be_overridden():
    with pytest.raises(ValueError, match=r"\['depth'\] is fixed by the model name 'resnet20'"):
        models.get("resnet20", (32, 32, 3), 10, depth=32)
    with pytest.raises(ValueError, match="fixed by the model name 'vit_tiny'"):
        models.get("vit_tiny", (32, 32, 3), 10, dim=64)


def test_generic_names_take_depth_and_set_model_name():
    model = models.get("resnet_cifar", (16, 16, 3), 3, depth=14, width=0.25)
    assert model.name == "resnet_cifar"
    assert "stage1_block1_out" in {l.name for l in model.layers}
    assert "stage1_block2_out" not in {l.name for l in model.layers}
    vit = models.get("vit", (16, 16, 3), 3, depth=1, dim=8, heads=2, patch_size=8)
    assert vit.name == "vit" and vit.output_shape == (None, 3)


def test_register_validates(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(ValueError, match="already registered"):
        models.register("resnet20", models.resnet_cifar, fixed={"depth": 20})
    with pytest.raises(ValueError, match="has no argument 'widthh'"):
        models.register("x", models.resnet_cifar, defaults={"widthh": 2})
    models.register("resnet8_test", models.resnet_cifar, fixed={"depth": 8})
    model = models.get("resnet8_test", (8, 8, 1), 2)
    assert model.name == "resnet8_test"
