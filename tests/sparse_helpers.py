"""Shared pieces for the sparse-core tests: real layer shapes, tiny models, batches and a training loop.

Everything here is deterministic: models and batches are drawn from explicit seeds, so two calls with the
same arguments give bit-identical tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from harness.sparse import MaskSet, MaskUpdate, ScoringInputs, SparsityMethod, build_method, method_class
from harness.sparse.methods.base import TIME


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the count.

    These tests use tiny tensors: on a loaded 2-core machine, two intra-op threads contending with other
    processes made the sparse tests ~7x slower (71 s against 10 s for test_sparse_methods.py).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _resnet20_shapes() -> list[tuple[int, ...]]:
    """CIFAR ResNet-20 weight shapes from the architecture (He et al. 2016, option-B shortcuts).

    3x3 stem with 16 channels; stages of 16/32/64 channels with 3 basic blocks each; a 1x1 shortcut
    convolution where the shape changes (first block of stages 2 and 3); classifier 64 -> 10. Listed in
    module order: conv1, conv2, then the shortcut of each block.
    """
    shapes: list[tuple[int, ...]] = [(16, 3, 3, 3)]
    channels = 16
    for width in (16, 32, 64):
        for block in range(3):
            shapes += [(width, channels, 3, 3), (width, width, 3, 3)]
            if block == 0 and channels != width:
                shapes.append((width, channels, 1, 1))
            channels = width
    return shapes + [(10, 64)]


def _vgg19_shapes() -> list[tuple[int, ...]]:
    """CIFAR VGG-19 (BN) weight shapes: cfg [64,64,M,128,128,M,256x4,M,512x4,M,512x4], classifier 512 -> 10."""
    layout = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]
    shapes: list[tuple[int, ...]] = []
    channels = 3
    for width in layout:
        shapes.append((width, channels, 3, 3))
        channels = width
    return shapes + [(10, 512)]


ARCH_SHAPES: dict[str, list[tuple[int, ...]]] = {"resnet20": _resnet20_shapes(), "vgg19": _vgg19_shapes()}


def build_cifar_model(arch: str, seed: int = 0) -> nn.Module:
    """The real CIFAR-10 network from `harness.models` (imported lazily: it is another engineer's module)."""
    from harness.models.build import build_model

    torch.manual_seed(seed)
    return build_model(arch, num_classes=10, input_shape=(3, 32, 32))


class TinyNet(nn.Module):
    """Two convolutions with BatchNorm and a linear classifier: every kind of parameter the core meets.

    Input 3 x 8 x 8. conv1 keeps 8 x 8 (padding 1); conv2 has stride 2 -> 4 x 4; global average pool;
    classifier 6 -> 5 with a bias (biases and BatchNorm parameters are never masked).
    """

    input_shape = (3, 8, 8)
    num_classes = 5

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


class TinyMLP(nn.Module):
    """Three linear layers (16 -> 24 -> 20 -> 5): big enough for a few hundred masked positions."""

    input_shape = (16,)
    num_classes = 5

    def __init__(self) -> None:
        super().__init__()
        self.hidden1 = nn.Linear(16, 24)
        self.hidden2 = nn.Linear(24, 20)
        self.out = nn.Linear(20, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.hidden2(torch.relu(self.hidden1(x)))))


def tiny_model(kind: type[nn.Module] = TinyNet, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return kind()


def make_batches(
    model: nn.Module, count: int, batch_size: int = 8, seed: int = 1
) -> list[tuple[Tensor, Tensor]]:
    """`count` random (inputs, labels) batches shaped for `model` (which has input_shape, num_classes)."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        inputs = torch.randn(batch_size, *model.input_shape, generator=generator)
        labels = torch.randint(0, model.num_classes, (batch_size,), generator=generator)
        batches.append((inputs, labels))
    return batches


def sgd(model: nn.Module, lr: float = 0.1) -> torch.optim.Optimizer:
    """The paper's optimizer: SGD, momentum 0.9, Nesterov, weight decay 5e-4."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)


def adam(model: nn.Module, lr: float = 0.01) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-3)


OPTIMIZERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {"sgd": sgd, "adam": adam}


def backward(model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    inputs, labels = batch
    nn.functional.cross_entropy(model(inputs), labels).backward()


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, method: SparsityMethod, batch: tuple[Tensor, Tensor]
) -> MaskUpdate | None:
    """One step of the documented loop: zero_grad, forward, backward, optimizer.step(), method.step()."""
    optimizer.zero_grad(set_to_none=True)
    backward(model, batch)
    optimizer.step()
    return method.step()


def settings_in_steps(name: str, total_steps: int, values: dict[str, object]) -> dict[str, object]:
    """The settings of method `name` among `values`, points in time given in steps (as these tests think of
    them) turned into the fractions of the run that the settings hold. Values the method lacks are left
    out, as the config leaves them out, so one set of values serves every method."""
    fields = method_class(name).Settings.model_fields
    return {
        key: value / total_steps if TIME in fields[key].metadata else value  # type: ignore[operator]
        for key, value in values.items()
        if key in fields
    }


def setup_method(
    name: str,
    model: nn.Module,
    optimizer_kind: str = "sgd",
    *,
    total_steps: int,
    seed: int = 0,
    **values: object,
) -> tuple[torch.optim.Optimizer, MaskSet, SparsityMethod]:
    optimizer = OPTIMIZERS[optimizer_kind](model)
    masks = MaskSet.for_model(model)
    settings = settings_in_steps(name, total_steps, values)
    method = build_method(name, masks, optimizer, settings, total_steps=total_steps, seed=seed)
    if method.needs_scoring:
        # Scoring batches of their own, so the training batches of every method stay the same.
        method.prepare(
            ScoringInputs(model, lambda count: make_batches(model, count, seed=99), model.input_shape)
        )
    return optimizer, masks, method


def state_tensors(optimizer: torch.optim.Optimizer, weight: Tensor) -> list[Tensor]:
    """The optimizer state of one parameter shaped like it (momentum buffer, Adam moments)."""
    return [
        value
        for value in optimizer.state.get(weight, {}).values()
        if isinstance(value, Tensor) and value.shape == weight.shape
    ]


def reference_order(scores: Sequence[float], k: int, largest: bool = True) -> set[int]:
    """The k indices a deterministic top-k must return, by a full sort on (score, index) in pure Python.

    Ties go to the lower index. Independent of the implementation under test (which never sorts).
    """
    sign = -1.0 if largest else 1.0
    order = sorted(range(len(scores)), key=lambda index: (sign * scores[index], index))
    return set(order[:k])
