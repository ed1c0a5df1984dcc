"""The plugin registry: build, did-you-mean, duplicates, entry-point plugins and broken plugins."""

import functools
import sys
import textwrap

import pytest

from samft.registry import LOSSES, METRICS, SCHEDULES, WEIGHTINGS, Registry, RegistryError


def make_registry():
    reg = Registry("widgets")

    @reg.register("dice")
    def dice(x, y, *, smooth=1.0):
        return (x, y, smooth)

    @reg.register("counter")
    class Counter:
        def __init__(self, start=0):
            self.start = start

    return reg


def test_build_binds_function_options_and_instantiates_classes():
    reg = make_registry()
    fn = reg.build({"name": "dice", "smooth": 2.0})
    assert isinstance(fn, functools.partial)
    assert fn(1, 2) == (1, 2, 2.0)
    assert reg.build({"name": "counter", "start": 5}).start == 5
    assert reg.build("counter").start == 0
    assert reg.names() == ["counter", "dice"]


def test_declared_option_checks_run_when_a_function_is_built():
    """A function is only bound when built; its declared checks catch a bad option then, not at its first call."""
    from samft.checks import OptionError, one_of

    reg = Registry("widgets")
    calls = []

    @reg.register("blend", checks={"mode": functools.partial(one_of, choices=("add", "max"))})
    def blend(a, b, *, mode="add"):
        calls.append(mode)
        return a + b if mode == "add" else max(a, b)

    assert reg.build({"name": "blend", "mode": "max"})(1, 2) == 2
    with pytest.raises(OptionError, match="Option mode must be one of add, max; got 'sum'") as err:
        reg.build({"name": "blend", "mode": "sum"})
    assert err.value.option == "mode" and calls == ["max"]  # the function never ran with "sum"
    with pytest.raises(OptionError, match="Option iou_loss must be one of mse, l1, smooth_l1"):
        LOSSES.build({"name": "sam", "iou_loss": "mae"})


def test_unknown_name_suggests_close_match():
    with pytest.raises(RegistryError, match=r"Unknown widget 'dcie'.*Did you mean 'dice'\?"):
        make_registry().get("dcie")


def test_unknown_option_suggests_close_match():
    with pytest.raises(RegistryError, match=r"no option 'smoth'.*Did you mean 'smooth'\?"):
        make_registry().build({"name": "dice", "smoth": 1})


def test_spec_without_name_is_rejected():
    with pytest.raises(RegistryError, match="needs a 'name' key"):
        make_registry().build({"smooth": 1})


def test_duplicate_name_names_both_modules():
    reg = make_registry()

    def other(x, y):
        return x

    with pytest.raises(RegistryError) as err:
        reg.register("dice")(other)
    message = str(err.value)
    assert "test_registry.make_registry.<locals>.dice" in message
    assert "test_registry.test_duplicate_name_names_both_modules.<locals>.other" in message


def test_names_must_be_snake_case():
    with pytest.raises(RegistryError, match="snake_case"):
        Registry("widgets").register("Dice")


def _install_distribution(tmp_path, monkeypatch, dist, entry_points, module_source):
    """A real (tiny) installed distribution: a package plus a dist-info with entry_points.txt."""
    (tmp_path / "samft_test_plugin.py").write_text(textwrap.dedent(module_source))
    info = tmp_path / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "samft_test_plugin", raising=False)


def test_entry_point_plugin_is_listed_without_import_and_loaded_on_get(tmp_path, monkeypatch):
    _install_distribution(tmp_path, monkeypatch, "samft-test-plugin", """
        [samft.widgets]
        triple = samft_test_plugin:triple
        """, """
        def triple(x, *, factor=3):
            return x * factor
        """)
    reg = make_registry()
    assert "triple" in reg.names()
    assert "samft_test_plugin" not in sys.modules  # listed, not imported
    assert reg.build({"name": "triple"})(2) == 6
    assert "samft_test_plugin" in sys.modules


def test_broken_plugin_names_entry_point_and_distribution(tmp_path, monkeypatch):
    _install_distribution(tmp_path, monkeypatch, "samft-broken-plugin", """
        [samft.widgets]
        broken = samft_test_plugin:missing_function
        """, "import math\n")
    reg = make_registry()
    with pytest.raises(RegistryError) as err:
        reg.get("broken")
    message = str(err.value)
    assert "samft_test_plugin:missing_function" in message
    assert "samft-broken-plugin" in message
    assert "pip uninstall samft-broken-plugin" in message
    assert reg.get("dice")  # the rest of the registry still works


def test_plugin_clashing_with_builtin_names_both(tmp_path, monkeypatch):
    _install_distribution(tmp_path, monkeypatch, "samft-clash-plugin", """
        [samft.widgets]
        dice = samft_test_plugin:dice
        """, "def dice(x, y):\n    return 0\n")
    with pytest.raises(RegistryError, match=r"'dice' is registered twice.*samft-clash-plugin"):
        make_registry().names()


@pytest.mark.parametrize("registry, name", [
    (LOSSES, "sam"), (LOSSES, "sigmoid_focal"), (LOSSES, "dice"), (WEIGHTINGS, "fixed"),
    (SCHEDULES, "cosine"), (METRICS, "stability_score"),
])
def test_builtin_registries_load_their_entries_lazily(registry, name):
    assert name in registry.names()
    assert callable(registry.get(name))
