"""Training the transformer (a whole model or a LoRA) on a frozen video tokenizer and a frozen text encoder:
bitwise cross-entropy on the error-corrected pyramid (docs/method.md §3, §5), the Random Frame Mask (§6) and caption
dropout for classifier-free guidance (§7). `examples/train_videoar.py` and `examples/train_lora.py` both use it.
"""

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate.logging import get_logger
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..error_correction import error_corrected_pyramid
from ..modeling_videoar import IGNORE_INDEX
from ..random_frame_mask import random_frame_keep
from ..sampling import uniform_noise
from ..scale_schedule import get_scale_sizes
from .curriculum import Stage
from .data import collate
from .trainer import Trainer

logger = get_logger(__name__)

# captions whose text states `TextEncoder` keeps (least recently used dropped first): Shapes has a few hundred
MAX_MEMOIZED_CAPTIONS = 4096
# the items' fields a latent cache keeps beside the caption, and how they read back: a class model's label, and
# whether a clip continues a longer video (`training_step` leaves its context out of the loss)
CACHED_FIELDS = {"label": int, "continues": lambda value: bool(int(value))}


class TextEncoder:
    """The frozen text encoder. With `memoize`, a caption seen recently is not encoded again (`--precompute`)."""

    def __init__(self, model, tokenizer, device, memoize: bool = False, max_memoized: int = MAX_MEMOIZED_CAPTIONS,
                 source: str = "the text encoder"):  # fmt: skip
        self.model = model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.source = source
        self.checked = False
        self.device = device
        self.memo: OrderedDict[str, torch.Tensor] | None = OrderedDict() if memoize else None
        self.max_memoized = max_memoized

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(texts, padding="longest", truncation=True, return_tensors="pt").to(self.device)
        states = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        return states.float(), tokens.attention_mask

    def check_vocabulary(self, texts: list[str]) -> None:
        """Refuse a tokenizer that turns every caption into unknown tokens: a text-encoder folder without its own
        tokenizer files loads a near-empty vocabulary, and the run would learn nothing from the captions."""
        unknown = self.tokenizer.unk_token_id
        ids = [self.tokenizer(t, add_special_tokens=False).input_ids for t in texts if t.strip()]
        if not ids:
            return
        if unknown is not None and all(i == unknown for row in ids for i in row):
            raise ValueError(
                f"The tokenizer from {self.source!r} (a vocabulary of {len(self.tokenizer)}) reads the captions "
                f"{texts[:2]} as unknown tokens only: it is not the text encoder's tokenizer. Give the folder that "
                "holds it (--text_tokenizer)."
            )
        self.checked = True

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.memo is None:
            return self.encode(texts)
        for text in dict.fromkeys(texts):
            if text not in self.memo:  # alone, not padded with others: its states never depend on the batch it came in
                states, mask = self.encode([text])
                self.memo[text] = states[0][mask[0].bool()]
        rows = []
        for text in texts:
            self.memo.move_to_end(text)
            rows.append(self.memo[text])
        while len(self.memo) > self.max_memoized:
            self.memo.popitem(last=False)
        states = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(r), dtype=torch.long) for r in rows], batch_first=True)
        return states, mask.to(self.device)


class LatentCache(torch.utils.data.Dataset):
    """The latents of a dataset's clips, one safetensors file per clip in `folder`: `{"latents": (d, T', h, w)}`
    with the caption (and the `CACHED_FIELDS` an item has) in the file's metadata. Items read from disk as they are
    needed, so memory stays flat."""

    def __init__(self, folder: Path, num_items: int):
        self.folder, self.num_items = Path(folder), num_items

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_items:
            raise IndexError(f"index {index} out of range for {self.num_items} cached clips")
        with safe_open(self.folder / f"{index:08d}.safetensors", framework="pt") as file:
            metadata = file.metadata()
            item = {"latents": file.get_tensor("latents"), "text": metadata["text"]}
            return {**item, **{key: kind(metadata[key]) for key, kind in CACHED_FIELDS.items() if key in metadata}}

    @classmethod
    @torch.no_grad()
    def build(cls, dataset, folder: Path, video_tokenizer, accelerator, batch_size: int = 16) -> "LatentCache":
        """Encode the clips of `dataset` into `folder`, each process its share (every N-th clip); clips already
        there (a re-run, or a run killed while encoding) are not encoded again."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        mine = [i for i in range(accelerator.process_index, len(dataset), accelerator.num_processes)
                if not (folder / f"{i:08d}.safetensors").is_file()]  # fmt: skip
        starts = range(0, len(mine), batch_size)
        for start in tqdm(starts, desc="encoding clips", unit="batch", disable=not accelerator.is_local_main_process):
            indices = mine[start : start + batch_size]
            batch = collate([dataset[i] for i in indices])
            video = batch["video"].to(video_tokenizer.device, video_tokenizer.dtype)
            latents = video_tokenizer.encode(video).latents.float().cpu()
            for row, (i, x, text) in enumerate(zip(indices, latents, batch["text"])):
                tmp = folder / f".{i:08d}.{os.getpid()}.tmp"
                metadata = {"text": text, **{key: str(int(batch[key][row])) for key in CACHED_FIELDS if key in batch}}
                save_file({"latents": x.contiguous()}, tmp, metadata=metadata)
                os.replace(tmp, folder / f"{i:08d}.safetensors")  # a kill never leaves half a file under the name
        accelerator.wait_for_everyone()
        return cls(folder, len(dataset))


def without_context(bits: list[torch.Tensor], continues: list[bool], context_frames: int) -> list[torch.Tensor]:
    """Per-scale target bits `(B, T, h, w, d)` with the first `context_frames` latent frames of every clip that
    continues a video set to `IGNORE_INDEX`: as in a long generation's later windows, those frames are given (the
    re-encoded end of the video so far) and only what follows them is predicted."""
    hide_BT = torch.zeros(bits[0].shape[:2], dtype=torch.bool, device=bits[0].device)
    hide_BT[torch.as_tensor(continues, dtype=torch.bool, device=hide_BT.device), :context_frames] = True
    return [b.float().masked_fill(hide_BT[:, :, None, None, None], IGNORE_INDEX) for b in bits]


def tokenizer_fingerprint(video_tokenizer) -> str:
    """A digest of the tokenizer's config and weights: cached latents are reused only with the same tokenizer, wherever
    it was loaded from."""
    config = {k: v for k, v in video_tokenizer.config.items() if not k.startswith("_")}  # `_name_or_path` is a path
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(video_tokenizer.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class TextToVideoTrainer(Trainer):
    """The transformer's loss step, caption dropout, cached latents (`precompute`) and validation samples.

    `fresh_transformer()` builds an untrained transformer of the same structure (LoRA layers included) on the CPU,
    which the final full state dict is loaded into; `save(transformer)` writes the result from it.
    """

    def __init__(self, accelerator, config, transformer, video_tokenizer, text_encoder: TextEncoder, *,
                 text_dropout: float, precompute: bool, validation_prompts: list[str],
                 fresh_transformer: Callable[[], torch.nn.Module], save: Callable[[torch.nn.Module], None],
                 gradient_checkpointing: bool = False):  # fmt: skip
        super().__init__(accelerator, config, transformer)
        if precompute and config.data.streaming:
            raise ValueError("--precompute caches every clip of a finite dataset; it does not combine with --streaming.")
        if gradient_checkpointing:  # transformers 5.23 renamed gradient_checkpointing_enable
            getattr(transformer, "activation_checkpointing_enable", transformer.gradient_checkpointing_enable)()
        transformer.train()
        self.video_tokenizer = video_tokenizer
        self.text_encoder = text_encoder
        self.text_dropout = text_dropout
        self.precompute = precompute
        self.validation_prompts = validation_prompts
        self.fresh_transformer = fresh_transformer
        self.save = save

    def frame_cost(self, num_frames: int) -> int:
        """Latent frames: the transformer's tokens grow with them, not with pixel frames."""
        return (num_frames - 1) // self.video_tokenizer.config.temporal_compression_ratio + 1

    def prepare_dataset(self, dataset, source: str, stage: Stage, num_frames: int, seed: int):
        if not self.precompute:
            return dataset
        # one folder per (tokenizer, clips): a re-run reuses it, even with other learning rates or step counts
        key = json.dumps([tokenizer_fingerprint(self.video_tokenizer), len(dataset), repr(self.config.data), source,
                          stage.resolution, num_frames, seed])  # fmt: skip
        folder = self.config.output_dir / "latent_cache" / hashlib.sha256(key.encode()).hexdigest()[:16]
        return LatentCache.build(dataset, folder, self.video_tokenizer, self.accelerator)

    def prefix(self, batch: dict, generators) -> dict:
        """The transformer's prefix arguments: captions, or class ids for a class model, each dropped (to the empty
        prompt, or the null class) with probability `text_dropout`, for classifier-free guidance."""
        keep = (uniform_noise((len(batch["text"]),), generators, "cpu") >= self.text_dropout).tolist()
        num_classes = self.unwrapped.config.num_classes
        if num_classes is not None:
            labels = [int(label) if k else num_classes for label, k in zip(batch["label"], keep)]
            return {"class_labels": torch.tensor(labels, device=self.accelerator.device)}
        if not self.text_encoder.checked:
            self.text_encoder.check_vocabulary(batch["text"])
        text_states, text_mask = self.text_encoder([t if k else "" for t, k in zip(batch["text"], keep)])
        return {"text_hidden_states": text_states, "text_attention_mask": text_mask}

    def training_step(self, batch, generators, step):
        device = self.accelerator.device
        if "latents" in batch:
            latents = batch["latents"].to(device)
        else:
            with torch.no_grad():
                latents = self.video_tokenizer.encode(batch["video"].to(device, self.video_tokenizer.dtype)).latents.float()
        prefix = self.prefix(batch, generators)
        config = self.unwrapped.config
        scale_sizes = get_scale_sizes(config.scale_schedule, *latents.shape[-2:])
        pyramid = error_corrected_pyramid(self.video_tokenizer.quantizer, latents, scale_sizes, config, generators)
        frame_keep = None
        if config.frame_mask_prob > 0:
            B, T = latents.shape[0], latents.shape[2]
            frame_keep = random_frame_keep(B, T, config.frame_mask_prob, config.frame_mask_window, generators, device)
        labels = pyramid.bits
        if any(batch.get("continues", ())):
            labels = without_context(labels, batch["continues"], config.reencode_context_frames)
        output = self.model(pyramid.scale_inputs, labels=labels, frame_keep=frame_keep, **prefix)
        return output.loss, {}

    def pipeline(self, transformer):
        from ..pipeline_videoar import VideoARPipeline

        text = self.text_encoder
        pipe = VideoARPipeline(
            video_tokenizer=self.video_tokenizer, transformer=transformer, text_encoder=text and text.model,
            tokenizer=text and text.tokenizer,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def write_samples(self, folder: Path, stage: Stage, batch: dict) -> None:
        from diffusers.utils import export_to_video

        if not self.validation_prompts:
            return
        pipe = self.pipeline(self.unwrapped)
        folder.mkdir(parents=True, exist_ok=True)
        for i, prompt in enumerate(self.validation_prompts):
            # a class model samples its first classes, one per validation prompt
            condition = {"class_labels": i % pipe.transformer.config.num_classes} if pipe.is_class_conditional else {"prompt": prompt}
            video = pipe(
                num_frames=stage.num_frames, height=stage.resolution, width=stage.resolution,
                generator=torch.Generator().manual_seed(self.config.seed + i), **condition,
            ).frames[0]  # fmt: skip
            if self.accelerator.is_main_process:
                export_to_video(list(video), str(folder / f"{i:02d}.mp4"), fps=8)

    def save_model(self, state_dict) -> None:
        transformer = self.fresh_transformer()
        transformer.load_state_dict(state_dict)
        self.save(transformer.eval())
