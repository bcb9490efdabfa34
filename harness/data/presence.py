"""Whether a run's dataset is on disk, and the one line that says what to do when it is not.

Torch-free on purpose: `harness run` and `harness sweep run` call `require_data` right after resolving the
config, before torch, torchvision or a model is imported, so a laptop without CIFAR hears about it within a
second or two of start-up instead of after ~25 s of imports and a download attempt that waits on DNS.

Downloads: `data.download` is true by default (a GPU machine with network gets CIFAR on first use). Before
trying one, the download host is resolved with a short timeout (`DNS_TIMEOUT_SECONDS`), in a thread because
`getaddrinfo` takes no timeout: without network, that answers in at most two seconds where torchvision's own
attempt sat for 20+ s. With a proxy configured the host need not resolve here, so the check is skipped and
the download is tried (a dead proxy refuses at once).
"""

from __future__ import annotations

import socket
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from harness.errors import UserError

DNS_TIMEOUT_SECONDS = 2.0
# What a user without the data can run instead (the CPU study's recipe); callers that know the command pass
# their own variant of it.
CPU_DATASET = "mnist1d"
CPU_COMMAND = f"harness run granet --arch resnet20 --dataset {CPU_DATASET}"


@dataclass(frozen=True)
class Archive:
    """A torchvision dataset's folder (what `data_dir` must hold), the archive it comes from, its files."""

    folder: str
    archive: str
    files: tuple[str, ...]
    host: str = "www.cs.toronto.edu"


ARCHIVES = {
    "cifar10": Archive(
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        ("batches.meta", *(f"data_batch_{index}" for index in range(1, 6)), "test_batch"),
    ),
    "cifar100": Archive("cifar-100-python", "cifar-100-python.tar.gz", ("meta", "train", "test")),
}


class DataSection(Protocol):
    """The fields of the config's data section read here (a Protocol: data sits beside config's users)."""

    dataset: str
    data_dir: Path
    download: bool


def damage(data: DataSection) -> tuple[Path, str] | None:
    """(the folder, what is wrong with it) when the dataset is not usable as it lies on disk, else None.

    A cheap look at names only: torchvision checks the files' checksums when it opens them."""
    if data.dataset in ARCHIVES:
        archive = ARCHIVES[data.dataset]
        folder = Path(data.data_dir) / archive.folder
        if not folder.is_dir():
            return folder, "absent"
        lacking = [name for name in archive.files if not (folder / name).is_file()]
        if lacking:
            return folder, f"damaged (lacks {', '.join(lacking)})"
        return None
    if data.dataset == "imagenet":
        for part in ("train", "val"):
            folder = Path(data.data_dir) / "imagenet" / part
            if not folder.is_dir():
                return folder, "absent"
    return None


def missing_data(data: DataSection) -> str | None:
    """Why a run of this config would not find its dataset on disk (None when it would, or when the data is
    generated): for `--dry-run`, which must not load or download anything."""
    found = damage(data)
    if found is None:
        return None
    folder, state = found
    if data.dataset == "imagenet":
        return f"data.data_dir: ImageNet folder {folder} does not exist; a run would fail"
    if state != "absent":
        return f"data.data_dir: {data.dataset} folder {folder} is {state}; a run would fail"
    then = (
        "a run would download it (needs network)"
        if data.download
        else "a run would fail (data.download=false)"
    )
    return f"data.data_dir: {data.dataset} is not in {folder}; {then}"


def host_resolves(host: str, timeout: float = DNS_TIMEOUT_SECONDS) -> bool:
    """Whether `host` resolves within `timeout` seconds (a daemon thread: a hung resolver is left behind)."""
    answer: list[bool] = []

    def look_up() -> None:
        try:
            socket.getaddrinfo(host, 443)
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=look_up, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def can_download(archive: Archive) -> tuple[bool, str]:
    """(whether to try a download, why not when not)."""
    if urllib.request.getproxies():
        return True, ""
    if host_resolves(archive.host):
        return True, ""
    return False, f"{archive.host} does not resolve within {DNS_TIMEOUT_SECONDS:g} s"


def how_to_provide(
    data: DataSection, folder: Path, state: str, cpu_command: str, download_problem: str = ""
) -> str:
    """The one line for a dataset that is absent or damaged: where it looked, how to provide it (with why a
    download did not or would not work), the CPU path."""
    data_dir = Path(data.data_dir)
    if data.dataset in ARCHIVES:
        archive = ARCHIVES[data.dataset]
        copy = (
            f"copy the extracted {archive.folder}/ folder (from {archive.archive}) into {data_dir}/"
            " or give --data-dir FOLDER that holds it"
        )
    else:
        copy = "give --data-dir FOLDER that holds imagenet/train and imagenet/val (one folder per class)"
    return (
        f"data.data_dir: {data.dataset} is {state}: looked for {folder}; {copy}; "
        f"a download (--set data.download=true, the default) needs network{download_problem}; "
        f"without the data (or on a CPU) run the CPU recipe instead: {cpu_command}"
    )


def require_data(data: DataSection, cpu_command: str) -> None:
    """Raise UserError (the one line of `how_to_provide`) unless the dataset is on disk, generated, or absent
    with a download both allowed and possible. Creates nothing."""
    found = damage(data)
    if found is None:
        return
    folder, state = found
    if state == "absent" and data.dataset in ARCHIVES and data.download:
        possible, why_not = can_download(ARCHIVES[data.dataset])
        if possible:
            return
        raise UserError(how_to_provide(data, folder, state, cpu_command, f", and {why_not}"))
    raise UserError(how_to_provide(data, folder, state, cpu_command))
