"""The paper's architectures: ResNet-20/32/56 and VGG-19 for CIFAR, ResNet-50 (CIFAR and ImageNet stems).

`harness.registry.models` names them (torch-free, with plug-ins); `build.build_model` builds one. Every architecture exists
for 2-D inputs (images) and 1-D inputs (MNIST-1D sequences), so each study runs at CPU scale on the paper's
networks. Conventions the sparse core relies on: the first convolution in `model.modules()` order is the
network's first layer; the last `nn.Linear` in that order is the classifier (attribute `fc` or
`classifier`); convolutions have no bias (BatchNorm follows each one).
"""
