"""A CNN built in PyTorch, exported with `torch.onnx.export`, uploaded, called: it answers
as torch does. Needs the optional extra (`pip install 'wasmq[torch]'`); skipped without."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest

from tests.support import Api
from tests.test_model_upload import settled

torch = pytest.importorskip("torch")


class SmallCnn(torch.nn.Module):
    """Conv, batch norm, Relu, a strided Conv, MaxPool, global pooling, Linear, Softmax:
    what a PyTorch image classifier's export is made of."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm1(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return torch.softmax(self.fc(x), dim=1)


def exported(net: torch.nn.Module, example: torch.Tensor) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        # dynamo=False: the TorchScript exporter, which needs no onnxscript
        torch.onnx.export(net, (example,), out, input_names=["image"],
                          output_names=["probabilities"], opset_version=17, dynamo=False)
    return out.getvalue()


def test_a_pytorch_export_answers_as_torch_does(api: Api) -> None:
    torch.manual_seed(0)
    net = SmallCnn()
    with torch.no_grad():  # batch norm statistics that are not the identity
        net.norm1.running_mean.uniform_(-0.5, 0.5)
        net.norm1.running_var.uniform_(0.5, 2.0)
    net.eval()
    image = torch.randn(1, 3, 16, 16)
    response = api.upload(exported(net, image), name="torch-cnn")
    assert response.status_code == 202, response.text
    record = settled(api, response.json()["cfid"])
    assert record["status"] == "ready", record
    for seed in range(3):
        x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            want = net(x).numpy().ravel()
        reply = api.call(record["cfid"], json.dumps({"input": x.numpy().tolist()})).json()
        assert reply["statusCode"] == 1, reply
        got = np.array(json.loads(reply["result"])["output"], np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
        assert got.argmax() == want.argmax()
