"""The ONNX zoo's CNN architectures, built here with onnx.helper and random weights.

The bench has no network for model hubs, and the speed of a CNN depends on its
shapes, not on its trained values: each function below lays out the
architecture the zoo's model has (layers, channels, strides, groups, the
BatchNormalization and Concat nodes an export leaves), with weights drawn from
a fixed seed at a scale that keeps activations finite.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper as h
from onnx import numpy_helper

from bench.model import resnet20


class Net:
    """A graph under construction: each layer returns the name of its output."""

    def __init__(self, name: str, seed: int = 0) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def fresh(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def const(self, array: np.ndarray) -> str:
        name = self.fresh("w")
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def const_i64(self, array: np.ndarray) -> str:
        name = self.fresh("s")
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        out = self.fresh(op.lower())
        self.nodes.append(h.make_node(op, inputs, [out], **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1,
             pad: int | None = None, group: int = 1, bias: bool = True) -> str:
        fan = cin // group * k * k
        w = self.const(self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan))
        inputs = [x, w] + ([self.const(0.01 * self.rng.standard_normal(cout))] if bias else [])
        p = k // 2 if pad is None else pad
        return self.node("Conv", inputs, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[p] * 4, group=group)

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        return self.node("BatchNormalization", [
            x, self.const(1 + 0.1 * r.standard_normal(c)), self.const(0.1 * r.standard_normal(c)),
            self.const(0.1 * r.standard_normal(c)), self.const(1 + 0.1 * r.random(c))])

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1,
                relu: bool = True, pad: int | None = None) -> str:
        y = self.bn(self.conv(x, cin, cout, k, stride, pad, group, bias=False), cout)
        return self.relu(y) if relu else y

    def pool(self, op: str, x: str, k: int, stride: int, pad: int = 0, ceil: int = 0) -> str:
        return self.node(op, [x], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
                         ceil_mode=ceil)

    def concat(self, xs: list[str]) -> str:
        return self.node("Concat", xs, axis=1)

    def head(self, x: str, cin: int, classes: int = 1000) -> str:
        flat = self.node("Flatten", [self.node("GlobalAveragePool", [x])])
        w = self.const(self.rng.standard_normal((classes, cin)) / np.sqrt(cin))
        return self.node("Gemm", [flat, w, self.const(np.zeros(classes))], transB=1)

    def model(self, out: str, size: int = 224, classes: int = 1000) -> onnx.ModelProto:
        """The logits first (what the bench compares: with random weights the softmax
        of a deep network saturates to 0 and 1), then the probabilities."""
        self.nodes.append(h.make_node("Identity", [out], ["logits"]))
        self.nodes.append(h.make_node("Softmax", [out], ["probabilities"], axis=1))
        graph = h.make_graph(
            self.nodes, self.name,
            [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, size, size])],
            [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, classes])
             for n in ("logits", "probabilities")],
            initializer=self.inits)
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
        model.ir_version = 8
        return model


def resnet50() -> onnx.ModelProto:
    """ResNet-50 v1: bottlenecks [3, 4, 6, 3], the stride on the 3x3 (as torchvision)."""
    n = Net("resnet50")
    x = n.pool("MaxPool", n.conv_bn("input", 3, 64, 7, 2), 3, 2, 1)
    cin = 64
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        for b in range(blocks):
            stride = 2 if stage and not b else 1
            y = n.conv_bn(x, cin, width, 1)
            y = n.conv_bn(y, width, width, 3, stride)
            y = n.conv_bn(y, width, 4 * width, 1, relu=False)
            short = x if b else n.conv_bn(x, cin, 4 * width, 1, stride, relu=False)
            x, cin = n.relu(n.node("Add", [y, short])), 4 * width
    return n.model(n.head(x, cin))


def squeezenet() -> onnx.ModelProto:
    """SqueezeNet 1.0: fire modules (squeeze 1x1, expand 1x1 and 3x3, concatenated)."""
    n = Net("squeezenet")

    def fire(x: str, cin: int, s: int, e: int) -> tuple[str, int]:
        sq = n.relu(n.conv(x, cin, s, 1))
        return n.concat([n.relu(n.conv(sq, s, e, 1)), n.relu(n.conv(sq, s, e, 3))]), 2 * e

    x = n.pool("MaxPool", n.relu(n.conv("input", 3, 96, 7, 2, pad=0)), 3, 2, ceil=1)
    c = 96
    for s, e, pool in ((16, 64, 0), (16, 64, 0), (32, 128, 1), (32, 128, 0), (48, 192, 0),
                       (48, 192, 0), (64, 256, 1), (64, 256, 0)):
        x, c = fire(x, c, s, e)
        if pool:
            x = n.pool("MaxPool", x, 3, 2, ceil=1)
    x = n.relu(n.conv(x, c, 1000, 1))
    return n.model(n.node("Flatten", [n.node("GlobalAveragePool", [x])]))


def shufflenet(groups: int = 3) -> onnx.ModelProto:
    """ShuffleNet v1 (g=3): grouped 1x1 convolutions, a channel shuffle, depthwise 3x3."""
    n = Net("shufflenet")
    x = n.pool("MaxPool", n.conv_bn("input", 3, 24, 3, 2), 3, 2, 1)
    cin, size = 24, 56

    def shape(*dims: int) -> str:
        return n.const_i64(np.array(dims, np.int64))

    for stage, (cout, units) in enumerate(((240, 4), (480, 8), (960, 4))):
        for u in range(units):
            stride = 2 if u == 0 else 1
            out = cout - cin if stride == 2 else cout
            mid = cout // 4
            y = n.conv_bn(x, cin, mid, 1, group=1 if stage == 0 and u == 0 else groups)
            y = n.node("Reshape", [y, shape(1, groups, mid // groups, size * size)])
            y = n.node("Transpose", [y], perm=[0, 2, 1, 3])
            y = n.node("Reshape", [y, shape(1, mid, size, size)])
            y = n.conv_bn(y, mid, mid, 3, stride, group=mid, relu=False)
            y = n.conv_bn(y, mid, out, 1, group=groups, relu=False)
            if stride == 2:
                x = n.relu(n.concat([n.pool("AveragePool", x, 3, 2, 1), y]))
                size //= 2
            else:
                x = n.relu(n.node("Add", [x, y]))
            cin = cout
    return n.model(n.head(x, cin))


def densenet121() -> onnx.ModelProto:
    """DenseNet-121: blocks of [6, 12, 24, 16] layers (growth 32) whose outputs are
    concatenated onto every later layer's input; transitions halve the channels."""
    n = Net("densenet121")
    x = n.pool("MaxPool", n.conv_bn("input", 3, 64, 7, 2), 3, 2, 1)
    c = 64
    for i, layers in enumerate((6, 12, 24, 16)):
        for _ in range(layers):
            y = n.conv(n.relu(n.bn(x, c)), c, 128, 1, bias=False)
            y = n.conv(n.relu(n.bn(y, 128)), 128, 32, 3, bias=False)
            x, c = n.concat([x, y]), c + 32
        if i < 3:
            x = n.conv(n.relu(n.bn(x, c)), c, c // 2, 1, bias=False)
            x, c = n.pool("AveragePool", x, 2, 2), c // 2
    return n.model(n.head(n.relu(n.bn(x, c)), c))


def inception_v2() -> onnx.ModelProto:
    """BN-Inception (the zoo's Inception v2): 1x1, 3x3, double-3x3 and pooling branches."""
    n = Net("inception_v2")
    x = n.pool("MaxPool", n.conv_bn("input", 3, 64, 7, 2), 3, 2, 1)
    x = n.conv_bn(n.conv_bn(x, 64, 64, 1), 64, 192, 3)
    x, c = n.pool("MaxPool", x, 3, 2, 1), 192
    # (1x1, 3x3 reduce, 3x3, double reduce, double 3x3, pool kind, pool projection, stride)
    for one, r3, c3, rd, d3, kind, proj, stride in (
            (64, 64, 64, 64, 96, "AveragePool", 32, 1), (64, 64, 96, 64, 96, "AveragePool", 64, 1),
            (0, 128, 160, 64, 96, "MaxPool", 0, 2), (224, 64, 96, 96, 128, "AveragePool", 128, 1),
            (192, 96, 128, 96, 128, "AveragePool", 128, 1),
            (160, 128, 160, 128, 160, "AveragePool", 128, 1),
            (96, 128, 192, 160, 192, "AveragePool", 128, 1),
            (0, 128, 192, 192, 256, "MaxPool", 0, 2),
            (352, 192, 320, 160, 224, "AveragePool", 128, 1),
            (352, 192, 320, 192, 224, "MaxPool", 128, 1)):
        branches = [n.conv_bn(x, c, one, 1)] if one else []
        branches.append(n.conv_bn(n.conv_bn(x, c, r3, 1), r3, c3, 3, stride))
        d = n.conv_bn(n.conv_bn(x, c, rd, 1), rd, d3, 3)
        branches.append(n.conv_bn(d, d3, d3, 3, stride))
        pooled = n.pool(kind, x, 3, stride, 1)
        branches.append(n.conv_bn(pooled, c, proj, 1) if proj else pooled)
        x, c = n.concat(branches), one + c3 + d3 + (proj or c)
    return n.model(n.head(x, c))


def vgg19() -> onnx.ModelProto:
    """VGG-19: sixteen 3x3 convolutions and three fully connected layers (548 MB of weights)."""
    n = Net("vgg19")
    x, c = "input", 3
    for width, convs in ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4)):
        for _ in range(convs):
            x, c = n.relu(n.conv(x, c, width, 3)), width
        x = n.pool("MaxPool", x, 2, 2)
    x = n.node("Flatten", [x])
    for cin, cout in ((512 * 7 * 7, 4096), (4096, 4096), (4096, 1000)):
        w = n.const(n.rng.standard_normal((cout, cin), dtype=np.float32) / np.sqrt(cin))
        x = n.node("Gemm", [x, w, n.const(np.zeros(cout))], transB=1)
        if cout == 4096:
            x = n.relu(x)
    return n.model(x)


# name -> (builder, input shape); ResNet-20 is the CIFAR network, at 32x32
ZOO: dict[str, tuple[Callable[[], onnx.ModelProto], tuple[int, ...]]] = {
    "ResNet-50": (resnet50, (1, 3, 224, 224)),
    "SqueezeNet": (squeezenet, (1, 3, 224, 224)),
    "ShuffleNet": (shufflenet, (1, 3, 224, 224)),
    "DenseNet-121": (densenet121, (1, 3, 224, 224)),
    "Inception v2": (inception_v2, (1, 3, 224, 224)),
    "VGG-19": (vgg19, (1, 3, 224, 224)),
    "ResNet-20": (resnet20, (1, 3, 32, 32)),
}
