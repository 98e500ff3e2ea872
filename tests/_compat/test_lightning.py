import importlib

import lightning
import pytest

from lightning_fed._compat import lightning as compat


@pytest.mark.parametrize(("module", "name"), compat.PRIVATE_NAMES)
def test_every_private_lightning_name_used_exists(module, name):
    assert hasattr(importlib.import_module(module), name), (
        f"{module}.{name} is gone in lightning {lightning.__version__}"
    )


@pytest.mark.parametrize(("path", "attribute"), compat.PRIVATE_ATTRIBUTES)
def test_every_private_lightning_attribute_used_exists(path, attribute):
    module, _, cls = path.rpartition(".")
    value = getattr(importlib.import_module(module), cls)()
    for name in attribute.split("."):  # "fit_loop._combined_loader": on the Trainer's fit loop
        assert hasattr(value, name)
        value = getattr(value, name)


def test_the_installed_lightning_is_supported():
    compat.check_version(lightning.__version__)


@pytest.mark.parametrize("version", ["2.3.3", "2.7.0", "3.0.0"])
def test_an_unsupported_lightning_is_refused_naming_both_versions(version):
    with pytest.raises(ImportError, match=rf"supports lightning >= 2\.4, < 2\.7; the installed lightning is {version}"):
        compat.check_version(version)


def test_the_supported_range_matches_pyproject():
    text = (importlib.resources.files("lightning_fed").parent / "pyproject.toml").read_text()
    low, high = compat.SUPPORTED
    assert f'"lightning>={low},<{high}"' in text
