"""Files -> features on one device, with decoding, transfer and the network overlapped.

CPU workers decode (or, for GPU decoding, read) the files and send uint8 batches through
pinned memory. A feeder thread copies each batch to the device, decodes JPEGs with nvJPEG where
asked, converts to float and resizes to 299x299 (on a GPU on a side stream), while the main
thread runs the network on the batch before: the three stages overlap. Features stay on the
device until the end (no synchronisation per batch).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .gpu_decode import decode_jpegs
from .loader import Batch, image_loader
from .network import INPUT_SIZE
from .progress import progress_bar


@dataclass
class Prepared:
    """A batch ready for the network: [n, 3, 299, 299] float32 in [0, 1], and the file positions."""

    images: torch.Tensor
    positions: torch.Tensor  # int64, on the CPU
    failures: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Extracted:
    features: torch.Tensor  # [n, dims] float32, on the model's device, in no particular order
    positions: torch.Tensor  # [n] int64 positions in the file list
    failures: list[tuple[int, str]]  # (position, reason) of files that could not be read


def to_model_input(pixels: torch.Tensor) -> torch.Tensor:
    """[k, 3, H, W] uint8 -> [k, 3, 299, 299] float32 in [0, 1]: ToTensor's division, then the
    network's own bilinear resize (which is then an exact identity inside the network)."""
    x = pixels.contiguous().float().div_(255)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return x


def prepare(batch: Batch, device: torch.device) -> Prepared:
    chunks, positions = [], []
    for indices, pixels in batch.groups:
        # [k, H, W, 3] -> [k, 3, H, W]; the copy is asynchronous from pinned memory.
        chunks.append(to_model_input(pixels.to(device, non_blocking=True).permute(0, 3, 1, 2)))
        positions.append(indices)
    failures = list(batch.failures)
    if batch.jpegs:
        by_size: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
        for index, image in zip(batch.jpeg_indices, decode_jpegs(batch.jpegs, device)):
            if isinstance(image, str):
                failures.append((index, image))
            else:
                by_size.setdefault(tuple(image.shape), []).append((index, image))
        for group in by_size.values():
            chunks.append(to_model_input(torch.stack([image for _, image in group])))
            positions.append(torch.tensor([index for index, _ in group], dtype=torch.int64))
    if not chunks:
        empty = torch.empty(0, 3, INPUT_SIZE, INPUT_SIZE, device=device)
        return Prepared(empty, torch.empty(0, dtype=torch.int64), failures)
    images = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
    return Prepared(images, torch.cat(positions), failures)


class _Feeder:
    """Runs `prepare` for the next batches in a thread, `depth` batches ahead; on a GPU on a side
    stream, so that copies, decoding and resizing overlap the network on the main stream."""

    _DONE = object()

    def __init__(self, batches: Iterable[Batch], device: torch.device, depth: int = 2) -> None:
        self.batches, self.device = batches, device
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        # Not a daemon, and joined when the consumer stops: a daemon thread still unwinding out of
        # torch calls when the interpreter finalises aborts the process.
        self.thread = threading.Thread(target=self._run, name="fid-feeder")
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _prepare(self, batch: Batch, stream) -> tuple[Prepared, torch.cuda.Event | None]:
        if stream is None:
            return prepare(batch, self.device), None
        with torch.cuda.stream(stream):
            prepared = prepare(batch, self.device)
            ready = torch.cuda.Event()
            ready.record(stream)
        return prepared, ready

    @torch.inference_mode()
    def _run(self) -> None:
        try:
            stream = None
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)  # a new thread starts on cuda:0
                stream = torch.cuda.Stream(self.device)
            for batch in self.batches:
                if self.stop.is_set() or not self._put(self._prepare(batch, stream)):
                    return
            self._put(self._DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(err)

    def __iter__(self) -> Iterator[Prepared]:
        try:
            while True:
                item = self.queue.get()
                if item is self._DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                prepared, ready = item
                if ready is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(ready)
                    # Made on the side stream, used on this one: keep the allocator from reusing
                    # the memory before this stream is done with it.
                    prepared.images.record_stream(current)
                yield prepared
        finally:
            self.stop.set()
            self.thread.join()


@torch.inference_mode()
def extract_features(
    files: list,
    model: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    batch_size: int = 50,
    num_workers: int = 0,
    gpu_decode: bool = False,
    progress: bool | None = None,
    description: str = "features",
) -> Extracted:
    """Features of `files` with `model` (images in [0, 1] -> [n, dims]) on `device`."""
    loader = image_loader(files, batch_size, num_workers, pin_memory=device.type == "cuda",
                          gpu_jpeg=gpu_decode)
    bar = progress_bar(len(files), len(loader), progress, description)
    features, positions, failures = [], [], []
    in_flight: list[torch.cuda.Event] = []
    try:
        for prepared in _Feeder(loader, device):
            failures += prepared.failures
            if prepared.images.shape[0]:
                features.append(model(prepared.images))
                positions.append(prepared.positions)
            if device.type == "cuda":
                # Run at most two batches ahead of the GPU: memory stays bounded and the
                # progress bar tells the truth.
                done = torch.cuda.Event()
                done.record()
                in_flight.append(done)
                if len(in_flight) > 2:
                    in_flight.pop(0).synchronize()
            bar.update(len(prepared.positions) + len(prepared.failures))
    finally:
        bar.close()
    if not features:
        return Extracted(torch.empty(0, 0, device=device), torch.empty(0, dtype=torch.int64), failures)
    return Extracted(torch.cat(features), torch.cat(positions), failures)
