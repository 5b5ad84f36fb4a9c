import types

import pytest

from kgrow import bench
from kgrow.bench import registry


@pytest.fixture
def temp_method():
    names = []

    def _register(name, factory):
        bench.register_method(name, factory)
        names.append(name)

    yield _register
    for name in names:
        if name in bench.available_methods():
            bench.unregister_method(name)


def test_baseline_is_built_in_and_first():
    assert bench.available_methods()[0] == "baseline"
    assert bench.get_method("baseline") is registry.baseline_factory
    with pytest.raises(ValueError, match="built in"):
        bench.unregister_method("baseline")


def test_register_and_unregister(temp_method):
    def factory(build_model, context):
        return build_model(), []

    temp_method("zz_demo", factory)
    assert "zz_demo" in bench.available_methods()
    assert bench.get_method("zz_demo") is factory
    with pytest.raises(ValueError, match="already registered"):
        bench.register_method("zz_demo", factory)
    bench.register_method("zz_demo", registry.baseline_factory, overwrite=True)
    assert bench.get_method("zz_demo") is registry.baseline_factory
    bench.unregister_method("zz_demo")
    assert "zz_demo" not in bench.available_methods()


@pytest.mark.parametrize("name", ["", "a,b", "with space", None])
def test_bad_names(name):
    with pytest.raises(ValueError, match="Method name"):
        bench.register_method(name, registry.baseline_factory)


def test_bad_factories():
    with pytest.raises(TypeError, match="callable"):
        bench.register_method("zz_bad", 42)
    with pytest.raises(ValueError, match="module:attribute"):
        bench.register_method("zz_bad", "no_colon_here")


def test_lazy_factory_is_imported_on_use(temp_method):
    temp_method("zz_lazy", "kgrow.bench.registry:baseline_factory")
    assert bench.get_method("zz_lazy") is registry.baseline_factory
    temp_method("zz_lazy_missing", "kgrow.bench.registry:does_not_exist")
    with pytest.raises(ImportError, match="does_not_exist"):
        bench.get_method("zz_lazy_missing")


def test_unknown_method_lists_registered_ones():
    with pytest.raises(KeyError, match=r"Unknown method 'nope'.*Registered methods: baseline"):
        bench.get_method("nope")
    with pytest.raises(KeyError, match=r"'nope', 'nada'.*baseline"):
        registry.check_methods(["baseline", "nope", "nada"])
    with pytest.raises(ValueError, match="No method"):
        registry.check_methods([" "])
    assert registry.check_methods(["baseline", "baseline"]) == ["baseline"]


class _FakeModel:
    def fit(self):
        pass


def _context():
    ctx = types.SimpleNamespace()
    ctx.build_model = lambda **kw: _FakeModel()
    return ctx


def test_setup_method_normalises_results(temp_method):
    cb = object()
    temp_method("zz_tuple", lambda build, ctx: (build(), [cb]))
    setup = registry.setup_method("zz_tuple", _context())
    assert isinstance(setup, bench.MethodSetup) and setup.callbacks == [cb]
    temp_method("zz_setup", lambda build, ctx: bench.MethodSetup(build(), (), sparsity=0.5))
    assert registry.setup_method("zz_setup", _context()).sparsity == 0.5
    temp_method("zz_wrong", lambda build, ctx: build())
    with pytest.raises(TypeError, match="must return \\(model, callbacks\\)"):
        registry.setup_method("zz_wrong", _context())
    temp_method("zz_notmodel", lambda build, ctx: ("model", []))
    with pytest.raises(TypeError, match="not a keras.Model"):
        registry.setup_method("zz_notmodel", _context())


def test_context_builds_zoo_model_with_overrides():
    ctx = registry.MethodContext(
        model_name="resnet20", model_kwargs={"width": 0.5}, input_shape=(8, 8, 1),
        num_classes=3, train=None, data=None, steps_per_epoch=1)
    assert ctx.build_model().get_layer("stage1_block0_conv1").filters == 8
    assert ctx.build_model(width=0.25).get_layer("stage1_block0_conv1").filters == 4


def test_composed_methods_share_one_model_and_all_callbacks(temp_method):
    cb_a, cb_b = object(), object()
    seen = []
    temp_method("zz_a", lambda build, ctx: (seen.append(build()) or seen[-1], [cb_a]))
    temp_method("zz_b", lambda build, ctx: registry.MethodSetup(
        seen.append(ctx.build_model()) or seen[-1], [cb_b], sparsity=0.9))
    assert registry.check_methods(["zz_a+zz_b"]) == ["zz_a+zz_b"]
    setup = registry.setup_method("zz_a + zz_b", _context())
    assert setup.callbacks == [cb_a, cb_b]
    assert setup.sparsity == 0.9
    assert len(seen) == 2 and seen[0] is seen[1] is setup.model


def test_composed_methods_refuse_what_cannot_share_a_run(temp_method):
    temp_method("zz_a", lambda build, ctx: (build(), []))
    temp_method("zz_own", lambda build, ctx: (_context().build_model(), []))
    temp_method("zz_narrow", lambda build, ctx: (build(width=0.5), []))
    temp_method("zz_s1", lambda build, ctx: registry.MethodSetup(build(), [], sparsity=0.5))
    temp_method("zz_s2", lambda build, ctx: registry.MethodSetup(build(), [], sparsity=0.5))
    with pytest.raises(ValueError, match="without context.build_model"):
        registry.setup_method("zz_a+zz_own", _context())
    with pytest.raises(ValueError, match="different arguments"):
        registry.setup_method("zz_a+zz_narrow", _context())
    with pytest.raises(ValueError, match="sparsity"):
        registry.setup_method("zz_s1+zz_s2", _context())
    with pytest.raises(ValueError, match="distinct"):
        registry.check_methods(["zz_a+baseline"])
    with pytest.raises(ValueError, match="distinct"):
        registry.check_methods(["zz_a+zz_a"])
    with pytest.raises(KeyError, match="zz_nope"):
        registry.check_methods(["zz_a+zz_nope"])
