"""Training batches: which clips each optimizer step sees, on each process, in an order a resumed run reproduces.

Map-style datasets are read through `ResumableBatchSampler`: batch `b` is a pure function of `(seed, b)`, and every
index carries its epoch, so random clip windows change every epoch (`set_epoch`, called in the worker that reads
the clip) and a resumed run sees exactly the clips of an uninterrupted one. accelerate splits each global batch
across processes. Streamed datasets are sharded per process by the dataset itself and resume from their saved
position instead of replaying the stream.

Random draws of a training step (caption dropout, error-correction flips, the frame mask, colour mixing) come from
`sample_generators`: one generator per sample, seeded by the run seed, the step and the sample's position in the
global batch. A sample draws the same numbers whichever process holds it, so N processes train like one, the ranks
draw differently, and a resume repeats the draws without any saved random state.
"""

import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from .curriculum import Stage
from .shapes_options import ShapesOptions


@dataclass
class DataOptions:
    """Where the clips come from and how they are read (the `data` flags of the scripts)."""

    dataset: str = "shapes"
    image_dataset: str | None = None
    dataset_config_name: str | None = None
    split: str = "train"
    streaming: bool = False
    fps: float = 8.0
    clips_per_video: int | str = 1
    short_video: str = "skip"
    num_workers: int | None = None
    label_column: str | None = None
    shapes: ShapesOptions = field(default_factory=ShapesOptions)

    def build(self, source: str, num_frames: int, resolution: int, seed: int, process_index: int = 0,
              num_processes: int = 1):  # fmt: skip
        """The clips of `source`: Shapes, or anything `load_video_dataset` reads (a videofolder, a saved `datasets`
        folder, a Hub dataset). A stream is sharded across processes here."""
        if source == "shapes":
            return self.shapes.dataset(num_frames, resolution, seed, labels=self.label_column is not None)
        from ..video_data import load_video_dataset

        extra = {"name": self.dataset_config_name} if self.dataset_config_name else {}
        return load_video_dataset(
            source, num_frames=num_frames, resolution=resolution, fps=self.fps, split=self.split,
            streaming=self.streaming, seed=seed, short_video=self.short_video, clips_per_video=self.clips_per_video,
            process_index=process_index, num_processes=num_processes, label_column=self.label_column, **extra,
        )  # fmt: skip

    def label_names(self) -> list[str]:
        """The classes of `dataset` (`label_column`), read before training to size a class-conditional model."""
        if self.dataset == "shapes":
            return self.shapes.label_names
        return self.build(self.dataset, 1, 8, 0).label_names

    def workers(self, num_processes: int) -> int:
        """`num_workers`, or by default the cores this process can spare (one left for the training step)."""
        if self.num_workers is not None:
            return self.num_workers
        return min(4, max(0, (os.cpu_count() or 1) // num_processes - 1))


def collate(items: list[dict]) -> dict:
    """Stack tensor fields, list the rest (captions, metadata); items that do not stack are named by their files."""
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if torch.is_tensor(values[0]):
            if len({v.shape for v in values}) > 1:
                found = ", ".join(f"{item.get('source', '?')} {tuple(item[key].shape)}" for item in items)
                raise ValueError(f"Cannot batch `{key}` of different shapes: {found}.")
            values = torch.stack(values)
        batch[key] = values
    return batch


def sample_generators(seed: int, step: int, micro_batch: int, first_position: int, count: int) -> list[torch.Generator]:
    """One CPU generator per sample of a micro-batch, seeded by `(seed, step, micro_batch, position in the global
    batch)`: the draws of a sample do not depend on the process that holds it."""
    generators = []
    for position in range(first_position, first_position + count):
        state = np.random.SeedSequence([seed, step, micro_batch, position]).generate_state(2, np.uint32)
        generators.append(torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1))
    return generators


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Batches of `(epoch, index)` over a map-style dataset: a seeded permutation per epoch, last partial batch
    dropped. Batch `b` depends only on `(seed, b)`, so a run resumed at `start_batch` sees exactly the batches an
    uninterrupted run would have seen."""

    def __init__(self, num_items: int, batch_size: int, num_batches: int, seed: int, start_batch: int = 0):
        if num_items < batch_size:
            raise ValueError(
                f"The dataset has {num_items} clips, fewer than one batch of {batch_size}: lower the batch size, or "
                "add data (`--clips_per_video` takes several clips from each video)."
            )
        self.num_items, self.batch_size, self.num_batches = num_items, batch_size, num_batches
        self.seed, self.start_batch = seed, start_batch
        self.batches_per_epoch = num_items // batch_size

    def _permutation(self, epoch: int) -> list[int]:
        return torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()

    def __iter__(self):
        epoch, permutation = None, None
        for b in range(self.start_batch, self.num_batches):
            if b // self.batches_per_epoch != epoch:
                epoch = b // self.batches_per_epoch
                permutation = self._permutation(epoch)
            position = (b % self.batches_per_epoch) * self.batch_size
            yield [(epoch, i) for i in permutation[position : position + self.batch_size]]

    def __len__(self) -> int:
        return self.num_batches - self.start_batch


class EpochIndexed(torch.utils.data.Dataset):
    """Reads `(epoch, index)`: sets the dataset's epoch in the process that reads (a DataLoader worker holds its
    own copy of the dataset, so an epoch set in the main process would never reach it)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, epoch_index: tuple[int, int]) -> dict:
        epoch, index = epoch_index
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class StageBatches:
    """The micro-batches of one curriculum stage on this process.

    Each optimizer step trains on videos or, with probability `stage.image_ratio` (a fixed seeded draw per step), on
    images: the image source at one frame (docs/method.md §7, stage I). `datasets` maps `True` (images) and
    `False` (videos) to the datasets to read and `batch_sizes` the same keys to global batch sizes: images and
    videos are batched apart, each at its own size. `data_state` is where streamed datasets stood at the checkpoint
    a run resumes from.
    """

    def __init__(self, accelerator, stage: Stage, datasets: dict, batch_sizes: dict, accumulation: int,
                 start_step: int, seed: int, num_workers: int = 0, data_state: dict | None = None):  # fmt: skip
        rng = random.Random(seed)
        self.is_image_step = [rng.random() < stage.image_ratio for _ in range(stage.steps)]
        self.accumulation = accumulation
        self.events: dict[str, set[str]] = {}
        self.datasets = {is_image: d for is_image, d in datasets.items() if is_image in self.is_image_step}
        self.loaders = {}
        for is_image, dataset in self.datasets.items():
            num_batches = self.is_image_step.count(is_image) * accumulation
            done = self.is_image_step[:start_step].count(is_image) * accumulation
            options = dict(collate_fn=collate, num_workers=num_workers)
            if isinstance(dataset, torch.utils.data.IterableDataset):
                # sharded by the dataset itself: each process reads its own rows, nothing is broadcast
                if (state := (data_state or {}).get(str(is_image))) is not None:
                    dataset.load_state_dict(state)
                local_batch_size = batch_sizes[is_image] // accelerator.num_processes
                loader = torch.utils.data.DataLoader(dataset, batch_size=local_batch_size, **options)
                self.loaders[is_image] = _to_device(loader, accelerator.device)
            else:
                sampler = ResumableBatchSampler(len(dataset), batch_sizes[is_image], num_batches, seed + is_image, done)
                loader = torch.utils.data.DataLoader(EpochIndexed(dataset), batch_sampler=sampler, **options)
                self.loaders[is_image] = iter(accelerator.prepare_data_loader(loader))

    def data_state(self) -> dict:
        """Where each streamed dataset stands, for the checkpoint (read with no worker processes, so exact)."""
        return {str(k): d.state_dict() for k, d in self.datasets.items() if isinstance(d, torch.utils.data.IterableDataset)}

    def data_stats(self) -> dict[str, int]:
        """Bad rows met so far on this process (corrupt, too short, padded, missing caption), by kind: those the
        datasets met here, and the `data_events` items carry out of DataLoader workers."""
        rows = {kind: set(found) for kind, found in self.events.items()}
        for dataset in self.datasets.values():
            for kind, found in (dataset.stats.rows() if hasattr(dataset, "stats") else {}).items():
                rows.setdefault(kind, set()).update(found)
        return {kind: len(found) for kind, found in rows.items()}

    def micro_batches(self, local_step: int) -> list[dict]:
        """The `accumulation` micro-batches of one optimizer step."""
        loader = self.loaders[self.is_image_step[local_step]]
        batches = [next(loader) for _ in range(self.accumulation)]
        for batch in batches:
            for kind, row in (event for events in batch.pop("data_events", []) for event in events):
                self.events.setdefault(kind, set()).add(row)
        return batches


def _to_device(loader, device):
    for batch in loader:
        yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
