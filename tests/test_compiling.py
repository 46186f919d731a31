"""`compile` settings: "auto" compiles only where TorchInductor can generate code, `true` names what is missing."""
import shutil

import pytest
import torch
from torch._inductor import config as inductor_config

from unimodal.config import ConfigError
from unimodal.utils.compiling import check_compile_setting, compiler_missing, use_compile


def test_a_cpu_without_a_cpp_compiler_compiles_nothing_on_auto_and_refuses_true(monkeypatch):
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    assert "no C++ compiler" in compiler_missing("cpu")
    assert use_compile("auto", "cpu") is False
    assert use_compile(False, "cpu") is False
    with pytest.raises(ConfigError, match="compile=true but no C\\+\\+ compiler"):
        use_compile(True, "cpu")


HAS_CXX = any(shutil.which(c) for c in ("g++", "clang++"))


@pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler on PATH")
def test_a_cpu_with_a_cpp_compiler_compiles_and_settings_are_checked():
    assert compiler_missing("cpu") is None
    assert use_compile("auto", "cpu") is True and use_compile(True, "cpu") is True
    assert compiler_missing(torch.device("meta")) is not None
    for good in (True, False, "auto"):
        check_compile_setting(good)
    with pytest.raises(ConfigError, match="compile must be true, false or auto"):
        check_compile_setting("sometimes")
    with pytest.raises(ConfigError, match="a string: write true / false unquoted"):
        check_compile_setting("false")
