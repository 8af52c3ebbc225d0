"""A PyTorch CNN (conv, batch-norm in eval mode, ReLU, max-pool, flatten, linear) exported by
torch.onnx.export imports, and its loss and parameter gradients match torch.autograd.
Skipped cleanly where torch is not installed (it is not on the project's CI machine)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import gradwire as gw  # noqa: E402


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_an_exported_cnn_trains_with_torchs_gradients(tmp_path, dtype, tol):
    torch.manual_seed(0)
    net = _Net().to(dtype)
    with torch.no_grad():  # running statistics that are not the identity
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    net.eval()
    x = torch.randn(5, 1, 8, 8, dtype=dtype)
    y = torch.tensor([0, 1, 2, 0, 1])
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["logits"], opset_version=17,
                      dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, do_constant_folding=False, dynamo=False)

    graph, params = gw.from_onnx(str(path), trainable={name for name, _ in net.named_parameters()})
    graph.set_loss(gw.softmax_cross_entropy(graph.value("logits"), graph.input("y", (None,), "int64")))
    loss, grads = gw.local().value_and_grad(graph, params, {"x": x.numpy(), "y": y.numpy()})

    torch_loss = torch.nn.functional.cross_entropy(net(x), y)
    torch_loss.backward()
    assert abs(loss - torch_loss.item()) <= tol * max(1.0, abs(loss))
    for name, parameter in net.named_parameters():
        want = parameter.grad.numpy()
        np.testing.assert_allclose(grads[name], want, rtol=tol, atol=tol * np.abs(want).max())
