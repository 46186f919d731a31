"""scripts/ddt_compiled_adapter.py: the harness candidate that runs our DiT through torch.compile
gives the eager adapter's outputs and gradients, and survives the harness's deep copies."""
import copy
import sys

import pytest
import torch

from conftest import SHARED, load_script
from unimodal.utils.compiling import compiler_missing

TOOLS = SHARED / "tools"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (TOOLS / "unimodal_ddt_adapter.py").is_file(), reason="needs ../shared/tools"),
    pytest.mark.skipif(compiler_missing("cpu") is not None, reason="TorchInductor needs a C++ compiler"),
]
KW = dict(input_size=2, patch_size=1, in_channels=8, hidden_size=[32, 48], depth=[1, 1], num_heads=[2, 2],
          mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=4)


def test_compiled_candidate_matches_the_eager_adapter(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    monkeypatch.delitem(sys.modules, "unimodal_ddt_adapter", raising=False)
    script = load_script("ddt_compiled_adapter")
    from unimodal_ddt_adapter import UnimodalDDT

    torch.manual_seed(0)
    eager = UnimodalDDT(**KW)
    for p in eager.parameters():               # leave adaLN-Zero's zeros: the output must depend on every block
        torch.nn.init.normal_(p, std=0.05)
    compiled = script.build(**KW)
    torch.nn.Module.load_state_dict(compiled, eager.state_dict())   # ours, not the reference's layout
    x, t, y = torch.randn(3, 8, 2, 2), torch.rand(3), torch.tensor([0, 3, 1])
    for model in (compiled, copy.deepcopy(compiled)):
        out = model(x, t, y)
        ref = eager(x, t, y)
        assert out.shape == x.shape and torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
        out.square().sum().backward()
        ref.square().sum().backward()
        for (name, a), b in zip(model.named_parameters(), eager.parameters()):
            assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name
        eager.zero_grad(set_to_none=True)
    guided = compiled.forward_with_cfg(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, 4)]), 4.0)
    assert torch.allclose(guided, eager.forward_with_cfg(torch.cat([x, x]), torch.cat([t, t]),
                                                         torch.cat([y, torch.full_like(y, 4)]), 4.0), atol=1e-5)
