"""BatchNorm statistics of channels that a mask update revives."""

from __future__ import annotations

import torch
from torch import nn

from harness.engine.batchnorm import RevivalGuard, alive_filters, batchnorm_after
from harness.models.build import build_model
from harness.sparse import MaskSet


def test_every_convolution_of_the_papers_models_is_paired_with_the_batchnorm_that_follows_it():
    model = build_model("resnet20", num_classes=10, input_shape=(1, 40), width=0.25)
    followers = batchnorm_after(model, (1, 40))
    modules = {module: name for name, module in model.named_modules()}
    pairs = {weight: modules[batchnorm] for weight, batchnorm in followers.items()}
    assert pairs["stem.0.weight"] == "stem.1"
    assert pairs["stages.0.0.conv1.weight"] == "stages.0.0.bn1"
    assert pairs["stages.1.0.shortcut.0.weight"] == "stages.1.0.shortcut.1"
    assert "fc.weight" not in pairs  # the classifier feeds no BatchNorm
    convolutions = [name for name, module in model.named_modules() if isinstance(module, nn.Conv1d)]
    assert sorted(pairs) == sorted(f"{name}.weight" for name in convolutions)


def _tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 4, 3, bias=False), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)
    )


def test_a_revived_filter_gets_fresh_statistics_and_nothing_else_changes():
    model = _tiny()
    model(torch.randn(2, 1, 8))  # materialise the lazy layer
    masks = MaskSet.for_model(model)
    guard = RevivalGuard(masks, batchnorm_after(model, (1, 8)))
    batchnorm = model[1]

    # Filter 2 dies: its channel outputs zero and the running statistics decay towards zero.
    dead = masks.masks[0].clone()
    dead[2] = 0
    masks.set([dead, masks.masks[1]])
    masks.apply()
    assert guard.masks_changed() == 0
    model.train()
    for _ in range(300):
        model(torch.randn(16, 1, 8))
    assert batchnorm.running_var[2] < 1e-12
    before = batchnorm.running_var.clone(), batchnorm.running_mean.clone()

    # One weight of filter 2 comes back: only channel 2 is reset, to BatchNorm's initial values.
    revived = dead.clone()
    revived[2, 0, 1] = 1
    masks.set([revived, masks.masks[1]])
    assert guard.masks_changed() == 1
    assert batchnorm.running_var[2] == 1.0 and batchnorm.running_mean[2] == 0.0
    others = [0, 1, 3]
    assert torch.equal(batchnorm.running_var[others], before[0][others])
    assert torch.equal(batchnorm.running_mean[others], before[1][others])
    # Nothing more to reset until the next revival.
    assert guard.masks_changed() == 0
    assert alive_filters(masks.masks[0]).tolist() == [True, True, True, True]


def test_recomputed_statistics_are_the_exact_average_and_everything_comes_back():
    from harness.engine.batchnorm import recomputed_statistics

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 3, 3), nn.BatchNorm1d(3), nn.ReLU())
    model.eval()
    model[1].running_mean.fill_(5.0)
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    batches = [torch.randn(4, 1, 10) * (index + 1) for index in range(3)]
    with recomputed_statistics(model, batches):
        assert not model.training
        outputs = [model[0](batch) for batch in batches]
        means = torch.stack([out.mean(dim=(0, 2)) for out in outputs]).mean(dim=0)
        variances = torch.stack([out.transpose(0, 1).reshape(3, -1).var(dim=1) for out in outputs]).mean(
            dim=0
        )
        assert torch.allclose(model[1].running_mean, means, atol=1e-6)
        assert torch.allclose(model[1].running_var, variances, atol=1e-5)
        assert model[1].num_batches_tracked.item() == 3
    assert not model.training and model[1].momentum == 0.1
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name
