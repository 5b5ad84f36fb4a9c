"""Every `>>>` example in kgrow's docstrings runs and prints what it shows.

Modules are found by walking the package, so new modules (method packages
added later) are picked up without editing this file. An example that cannot
run here is marked `# doctest: +SKIP` next to a sentence saying why; examples
that read the installed Fashion-MNIST are skipped only where it is missing.
"""
import doctest
import importlib
import os
import pkgutil

import pytest

import kgrow
from kgrow.data import sources

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
MODULES = sorted(m.name for m in pkgutil.walk_packages(kgrow.__path__, "kgrow.")
                 if not m.name.endswith("__main__")) + ["kgrow"]


def _fashion_mnist_installed():
    directory = sources.fashion_mnist_dir()
    return os.path.isdir(directory) and sources.find_fashion_mnist_files(directory) is not None


def docstring_tests(module_name):
    module = importlib.import_module(module_name)
    return [t for t in doctest.DocTestFinder(exclude_empty=True).find(module) if t.examples]


def test_the_runner_finds_the_examples():
    names = {t.name for m in MODULES for t in docstring_tests(m)}
    assert {"kgrow.data", "kgrow.surgery.graph.require_rebuildable",
            "kgrow.controller.controller.TrainingController.replace_model"} <= names
    examples = sum(len(t.examples) for m in MODULES for t in docstring_tests(m))
    assert examples > 300, examples


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    tests = docstring_tests(module_name)
    if not tests:
        pytest.skip(f"{module_name} has no docstring examples")
    have_data = _fashion_mnist_installed()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = []
    for test in tests:
        if not have_data and any('"fashion_mnist"' in e.source for e in test.examples):
            continue  # the example reads the Debian package's files, absent here
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
