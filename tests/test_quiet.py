"""The kit's one place for library noise (utils.quiet): upstream release notices never reach a lesson's
output, and the kit itself calls the supported names, while real problems still show."""

import logging
import warnings

import pytest

from kdrl_mini import models
from kdrl_mini.utils import quiet


def _warn_from(module: str, category) -> list:
    """Raise one warning attributed to ``module`` (as if raised inside it) after quiet(); the shown ones."""
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        quiet()
        warnings.warn_explicit("a notice", category, filename=f"{module}.py", lineno=1, module=module)
    return shown


@pytest.mark.parametrize("module", ["transformers.modeling_utils", "peft.peft_model", "trl", "bitsandbytes.nn"])
@pytest.mark.parametrize("category", [FutureWarning, DeprecationWarning])
def test_release_notices_from_libraries_are_hidden(module, category):
    assert _warn_from(module, category) == []


@pytest.mark.parametrize("module,category", [
    ("kdrl_mini.trainer", FutureWarning),            # the kit calling a deprecated name: shown, so it is fixed
    ("transformers.generation", UserWarning),       # a library telling the kit it misuses it: shown
    ("transformersx", FutureWarning),               # only whole package names match
])
def test_other_warnings_still_show(module, category):
    assert len(_warn_from(module, category)) == 1


def test_library_loggers_keep_errors_only():
    quiet()
    for name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub", "peft"):
        log = logging.getLogger(name)
        assert not log.isEnabledFor(logging.WARNING) and log.isEnabledFor(logging.ERROR)


def test_checkpointing_uses_the_supported_name(data_dir):
    """transformers 5.25 deprecates gradient_checkpointing_enable; the kit's call raises no notice at all
    (warnings are errors here), and checkpointing is on."""
    model = models.load_causal_lm(data_dir / "models" / "student", "none", "cpu", role="student")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        models.enable_checkpointing(model)
    assert model.is_activation_checkpointing if hasattr(model, "is_activation_checkpointing") \
        else model.is_gradient_checkpointing
