"""Data: the datasets (`datasets`; their names, plug-ins included, in `harness.registry.datasets`), the loaders
with exact mid-epoch resume (`loaders`), the device-resident CIFAR pipeline (`resident`) and a writer of
CIFAR-format files for benchmarks and tests (`cifar_files`)."""
