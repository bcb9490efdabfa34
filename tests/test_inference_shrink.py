"""Structured shrinking (issue 27): filters without live weights are removed with the input channels reading
them, exactly (logits within 1e-4 relative), on every exported architecture in 1-D and 2-D, through residual
adds (a channel the shortcut still carries stays) and zero padding (border-exact bias corrections)."""

from __future__ import annotations

import pytest
import torch
from sparse_helpers import one_thread
from test_export import DATASET_OF_DIMS, random_batchnorm_model, relative_error
from torch import nn

from harness.engine.flops import inference_flops, output_positions
from harness.inference import export as exporter
from harness.inference.runtime import SPARSE_KINDS
from harness.sparse import MaskSet

RELATIVE_TOLERANCE = 1e-4  # the issue's: max |exported - masked| <= 1e-4 * max |masked logit|
WIDTHS = {"resnet20": 0.5, "resnet32": 0.5, "resnet56": 0.25, "vgg19": 0.25, "resnet50": 0.25}


@pytest.fixture(autouse=True)
def on_one_thread():
    with one_thread():
        yield


def model_with_random_batchnorm(arch: str, dims: int, sparsity: float = 0.9):
    """A random ERK model whose BatchNorm shifts are half positive, half negative: a dead filter's constant
    output (its shift) then survives ReLU about half the time."""
    return random_batchnorm_model(arch, dims, sparsity, width=WIDTHS[arch], shift=0.5)


def kill(model: nn.Module, masks: dict[str, torch.Tensor], name: str, filters) -> None:
    """Prune whole filters of one layer: mask and weight (training keeps masked weights at zero)."""
    masks[name] = masks[name].clone()
    masks[name][filters] = False
    with torch.no_grad():
        dict(model.named_parameters())[name].mul_(masks[name].to(torch.float32))


def export(model, masks, shape, arch, dims):
    return exporter.export_model(
        model, masks, arch=arch, dataset=DATASET_OF_DIMS[dims], input_shape=shape, layers="dense"
    )


def assert_logits_match(payload, model, masks, shape) -> None:
    """Every kernel mix of the shrunk export (all dense, all CSR, alternating) against the masked model."""
    reference = exporter.masked_reference(model, masks)
    names = list(payload["plans"][0]["kinds"])
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(7))
    mixes = [dict.fromkeys(names, "dense"), dict.fromkeys(names, "sparse")]
    mixes.append({name: ("sparse" if index % 2 else "dense") for index, name in enumerate(names)})
    with torch.inference_mode():
        expected = reference(x)
        for kinds in mixes:
            got = exporter.model_from_payload(payload, kinds)(x)
            assert relative_error(got, expected) <= RELATIVE_TOLERANCE, kinds


def shrinking(payload) -> dict[str, dict]:
    return {record["name"]: record for record in payload["shrinking"]["layers"]}


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("arch", list(WIDTHS))
def test_shrinking_with_forced_dead_filters_keeps_the_logits(arch, dims):
    model, masks, shape = model_with_random_batchnorm(arch, dims)
    generator = torch.Generator().manual_seed(11)
    names = list(masks)[:-1]  # not the classifier
    for name in names:
        filters = masks[name].shape[0]
        # Channel 1 dies in every layer (so whole residual groups lose it), a random fifth of the rest too.
        chosen = (torch.rand(filters, generator=generator) < 0.2) | (torch.arange(filters) == 1)
        kill(model, masks, name, chosen)
    payload = export(model, masks, shape, arch, dims)
    report = payload["shrinking"]
    assert report["filters_removed"] > 0 and report["inputs_removed"] > 0
    assert report["macs_shrunk"] < report["macs_dense"]
    assert report["filters_removed"] == report["filters"] - report["filters_kept"]
    # Some removed channel is a positive constant read through zero padding: a border correction is stored.
    assert any("bias_correction" in spec for spec in payload["layers"])
    for spec in payload["layers"]:
        if spec["op"] in ("conv", "linear"):
            record = shrinking(payload)[spec["name"]]
            assert spec["weight_shape"][:2] == [record["filters_kept"], record["inputs_kept"]]
    assert_logits_match(payload, model, masks, shape)


def test_a_residual_group_keeps_a_channel_its_shortcut_carries_and_drops_it_when_no_input_does():
    """ResNet-20 1-D: channel 0 of stage 1 dies on the main path of every block (conv2), but the projection
    shortcut still computes it, so every register of the stage keeps it (conv2 as a zero row); channel 0 of
    stage 0 dies on every main path and in the stem, which feeds the identity shortcuts: gone everywhere."""
    model, masks, shape = model_with_random_batchnorm("resnet20", 1)
    for block in range(3):
        kill(model, masks, f"stages.1.{block}.conv2.weight", [0])
        kill(model, masks, f"stages.0.{block}.conv2.weight", [0])
    kill(model, masks, "stem.0.weight", [0])
    payload = export(model, masks, shape, "resnet20", 1)
    layers = shrinking(payload)
    specs = {spec["name"]: spec for spec in payload["layers"]}
    # Stage 1 (16 channels at width 0.5): channel 0 kept as a zero row in each conv2, read by every consumer.
    for block in range(3):
        record = layers[f"stages.1.{block}.conv2"]
        assert (record["filters"], record["filters_kept"]) == (16, 16)
        weight = exporter.decode_weight(
            specs[record["name"]]["weight"], specs[record["name"]]["weight_shape"]
        )
        assert not bool(weight.to_dense()[0].any())
    assert layers["stages.1.0.shortcut.0"]["filters_kept"] == 16
    assert layers["stages.2.0.conv1"]["inputs_kept"] == layers["stages.2.0.shortcut.0"]["inputs_kept"] == 16
    # Stage 0 (8 channels): channel 0 gone from the stem and every conv2, and from every reader's inputs.
    for name in ("stem.0", *(f"stages.0.{block}.conv2" for block in range(3))):
        assert (layers[name]["filters"], layers[name]["filters_kept"]) == (8, 7)
    for name in (
        *(f"stages.0.{block}.conv1" for block in range(3)),
        "stages.1.0.conv1",
        "stages.1.0.shortcut.0",
    ):
        assert (layers[name]["inputs"], layers[name]["inputs_kept"]) == (8, 7)
    assert payload["shrinking"]["filters_removed"] == 4
    assert_logits_match(payload, model, masks, shape)

    # The shortcut loses channel 0 too: now no input of stage 1's adds carries it, and it goes.
    kill(model, masks, "stages.1.0.shortcut.0.weight", [0])
    payload = export(model, masks, shape, "resnet20", 1)
    layers = shrinking(payload)
    for name in ("stages.1.0.shortcut.0", *(f"stages.1.{block}.conv2" for block in range(3))):
        assert (layers[name]["filters"], layers[name]["filters_kept"]) == (16, 15)
    for name in ("stages.1.1.conv1", "stages.1.2.conv1", "stages.2.0.conv1", "stages.2.0.shortcut.0"):
        assert (layers[name]["inputs"], layers[name]["inputs_kept"]) == (16, 15)
    assert payload["shrinking"]["filters_removed"] == 8
    assert_logits_match(payload, model, masks, shape)


def test_a_constant_channel_read_through_zero_padding_gives_an_exact_border_correction():
    """VGG-19 1-D: filter 0 of the first convolution is dead with BatchNorm shift 1 (constant 1 after ReLU),
    filter 1 dead with shift -1 (0 after ReLU). The second convolution (kernel 3, padding 1, length 40)
    absorbs channel 0 as a bias whose first position misses tap 0 and whose last misses tap 2; channel 1
    absorbs to nothing."""
    model, masks, shape = model_with_random_batchnorm("vgg19", 1)
    batchnorm = model.features[1]
    with torch.no_grad():
        batchnorm.running_mean[:2] = 0.0
        batchnorm.bias[:2] = torch.tensor([1.0, -1.0])
    kill(model, masks, "features.0.weight", [0, 1])
    consumer = model.features[3]
    masks["features.3.weight"] = torch.ones_like(masks["features.3.weight"])  # weights on every tap
    payload = export(model, masks, shape, "vgg19", 1)
    spec = next(spec for spec in payload["layers"] if spec["name"] == "features.3")
    correction = exporter.decode_correction(spec["bias_correction"])
    assert list(correction.shape) == [consumer.out_channels, 40]
    assert not bool(correction[:, 1:-1].any())
    # Folded: the consumer's BatchNorm scales its weights; channel 0's constant is exactly 1.
    following = model.features[4]
    scale = following.weight / torch.sqrt(following.running_var + following.eps)
    weight = consumer.weight.detach() * scale.detach().view(-1, 1, 1)
    torch.testing.assert_close(correction[:, 0], -weight[:, 0, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(correction[:, -1], -weight[:, 0, 2], rtol=1e-5, atol=1e-6)
    assert shrinking(payload)["features.3"]["inputs_kept"] == masks["features.0.weight"].shape[0] - 2
    assert_logits_match(payload, model, masks, shape)


def test_a_wholly_dead_layer_leaves_a_constant_network_that_still_exports():
    model, masks, shape = model_with_random_batchnorm("vgg19", 1)
    kill(model, masks, "features.10.weight", slice(None))
    payload = exporter.export_model(
        model, masks, arch="vgg19", dataset="mnist1d", input_shape=shape, layers="sparse"
    )
    layers = shrinking(payload)
    assert layers["features.10"]["filters_kept"] == 0
    assert layers["features.14"]["inputs_kept"] == layers["features.14"]["filters_kept"] == 0
    assert layers["classifier"]["inputs_kept"] == 0 and layers["classifier"]["filters_kept"] == 10
    assert payload["shrinking"]["macs_nonzero_kept"] < payload["shrinking"]["macs_nonzero"]
    network = exporter.model_from_payload(payload)
    x = torch.randn(4, *shape)
    with torch.inference_mode():
        logits = network(x)
    assert torch.equal(logits, logits[:1].expand(4, -1))  # the same logits for every input
    assert_logits_match(payload, model, masks, shape)


@pytest.mark.parametrize("dims", [1, 2])
def test_the_multiply_add_counts_agree_with_the_flops_accounting(dims):
    model, masks, shape = exporter.random_masked_model("resnet20", DATASET_OF_DIMS[dims], 0.9, width=0.5)
    payload = export(model, masks, shape, "resnet20", dims)
    report = payload["shrinking"]
    mask_set = MaskSet.for_model(model)
    mask_set.load_state_dict(masks)
    flops = inference_flops(model, mask_set, output_positions(model, shape))
    assert report["macs_dense"] * 2 == flops.dense
    assert report["macs_nonzero"] * 2 == flops.sparse
    assert report["filters"] == sum(record["filters"] for record in report["layers"])


def test_every_sparse_kernel_computes_the_same_shrunk_network():
    model, masks, shape = model_with_random_batchnorm("resnet20", 2)
    kill(model, masks, "stages.0.0.conv1.weight", [0, 3])
    payload = export(model, masks, shape, "resnet20", 2)
    reference = exporter.masked_reference(model, masks)
    x = torch.randn(9, *shape, generator=torch.Generator().manual_seed(1))  # several im2col blocks
    program = exporter.program_of(payload)
    names = program.weight_names
    with torch.inference_mode():
        expected = reference(x)
        for kind in SPARSE_KINDS:
            # bsr needs a block in every spec: give each the smallest that divides it, whatever the fill.
            for spec in program.layers:
                spec["bsr_block"] = 1
            got = program.single(dict.fromkeys(names, kind), "contiguous")(x)
            assert relative_error(got, expected) <= RELATIVE_TOLERANCE, kind
