"""`VideoARPipeline`: text (and optionally frames) to video by next-frame and next-scale prediction."""

import inspect
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput, logging
from diffusers.video_processor import VideoProcessor
from huggingface_hub import CommitInfo, HfApi, ModelCard, snapshot_download
from safetensors import safe_open
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .atomic_directory import atomic_directory
from .causal_cnn import causal_streaming
from .guidance import TEXT_TO_VIDEO, guidance_table
from .hub import upload_pipeline_folder
from .lora import VideoARLoraLoaderMixin
from .modeling_tokenizer import VideoARTokenizer
from .modeling_videoar import VideoARTransformer
from .sampling import sample_bits

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("np", "pil", "pt", "latent")
# keyword arguments of `save_pretrained(..., push_to_hub=True)` that go to the upload
HUB_KWARGS = ("repo_id", "commit_message", "private", "token", "create_pr", "model_card", "api")


@dataclass
class VideoARPipelineOutput(BaseOutput):
    """
    frames: per `output_type`: `np` `(B, F, H, W, 3)` floats in [0, 1]; `pt` `(B, F, 3, H, W)`; `pil` a list of
        lists of images; `latent` the accumulated token features `(B, d, T', h, w)` (decode with the tokenizer).
    """

    frames: np.ndarray | torch.Tensor | list[list[PIL.Image.Image]]


class VideoARPipeline(DiffusionPipeline, VideoARLoraLoaderMixin):
    """Generate videos with VideoAR (arXiv 2601.05966).

    Components:
        video_tokenizer: [`VideoARTokenizer`], the causal 3D tokenizer with its multi-scale bitwise quantizer.
        transformer: [`VideoARTransformer`], the autoregressive transformer.
        text_encoder: a frozen transformers text encoder; its `last_hidden_state` is the text prefix.
        tokenizer: the text encoder's tokenizer.

    One transformer forward pass samples a whole scale of a latent frame, so a video costs exactly
    `latent frames x scales` passes; the text prefix rides along with the first. LoRA adapters load with
    `load_lora_weights` and the other methods of [`VideoARLoraLoaderMixin`].
    """

    model_cpu_offload_seq = "text_encoder->transformer->video_tokenizer"
    _callback_tensor_inputs = ["latents", "logits"]

    def __init__(
        self,
        video_tokenizer: VideoARTokenizer,
        transformer: VideoARTransformer,
        text_encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
    ):
        super().__init__()
        _check_components_agree(video_tokenizer, transformer, text_encoder)
        self.register_modules(
            video_tokenizer=video_tokenizer, transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer
        )
        self.video_processor = VideoProcessor(vae_scale_factor=video_tokenizer.config.spatial_compression_ratio)

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def download(cls, pretrained_model_name: str, **kwargs) -> str:
        """Fetch a Hub repo with `huggingface_hub.snapshot_download` (diffusers' own `download` cannot resolve
        out-of-tree components). Honours `HF_HUB_OFFLINE` and the local cache."""
        accepted = inspect.signature(snapshot_download).parameters
        try:
            return snapshot_download(pretrained_model_name, **{k: v for k, v in kwargs.items() if k in accepted})
        except OSError as error:  # huggingface_hub's not-found, offline and HTTP errors are all OSErrors
            raise OSError(f"Could not fetch the pipeline {pretrained_model_name!r} from the Hub: {error}") from error

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "VideoARPipeline":
        """Load from a local folder or a Hub repo id. Every component ends up in `dtype` (alias `torch_dtype`),
        fp32 by default. Weight files are checked first, so a missing or corrupt one is named in the error."""
        dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
        if dtype is not None and torch_dtype is not None:
            raise ValueError("Pass `dtype` or its alias `torch_dtype`, not both.")
        dtype = dtype or torch_dtype or torch.float32
        folder = str(pretrained_model_name_or_path)
        if not os.path.isdir(folder):
            download_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
            folder = cls.download(folder, **download_kwargs)
        _check_weight_files(folder)
        pipe = super().from_pretrained(folder, dtype=dtype, **kwargs)
        for component in pipe.components.values():  # transformers keeps a checkpoint's dtype unless told otherwise
            if isinstance(component, torch.nn.Module) and component.dtype != dtype:
                component.to(dtype=dtype)
        return pipe

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        push_to_hub: bool = False,
        **kwargs,
    ):
        """Save every component (safetensors only) into a temporary folder, then rename it into place.

        A fused LoRA is saved as part of the weights; an unfused one is refused (save it with `save_lora_weights`).
        With `push_to_hub`, the folder is then uploaded as `push_to_hub` does; `repo_id` defaults to the folder's
        name and the other keyword arguments are `push_to_hub`'s.
        """
        if not safe_serialization:
            raise ValueError("`safe_serialization=False` is not supported: VideoAR saves safetensors only.")
        self._check_savable()
        hub_kwargs = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        with atomic_directory(save_directory) as tmp, self._lora_layers_detached():
            super().save_pretrained(tmp, safe_serialization=True, **kwargs)
        if push_to_hub:
            hub_kwargs.setdefault("repo_id", Path(save_directory).name)
            return upload_pipeline_folder(save_directory, **hub_kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        model_card: str | os.PathLike | ModelCard | None = None,
        api: HfApi | None = None,
    ) -> CommitInfo:
        """Upload the pipeline to the Hub as one commit: every component in safetensors, plus a model card.

        `model_card` (a `ModelCard`, a card file or its text) becomes the repo's `README.md`; by default a card with
        the metadata the Hub needs (`pipeline_tag: text-to-video`, `library_name: videoar-hf`) and a usage snippet.
        The repo is created if needed. `api` is the `HfApi` to use (default: `HfApi(token=token)`). Load it back with
        `VideoARPipeline.from_pretrained(repo_id)`.
        """
        self._check_savable()
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(Path(tmp) / "pipeline")
            return upload_pipeline_folder(
                Path(tmp) / "pipeline", repo_id, model_card=model_card, commit_message=commit_message,
                private=private, token=token, create_pr=create_pr, api=api,
            )  # fmt: skip

    # ------------------------------------------------------------------ inputs

    def check_inputs(
        self,
        prompt,
        negative_prompt,
        num_frames,
        height,
        width,
        num_videos_per_prompt,
        top_k,
        top_p,
        temperature,
        generator,
        output_type,
        image,
        video,
        callback_on_step_end_tensor_inputs,
    ):
        if isinstance(prompt, str):
            prompt = [prompt]
        if not isinstance(prompt, list) or not all(isinstance(p, str) for p in prompt):
            raise ValueError(f"`prompt` must be a string or a list of strings, got {type(prompt).__name__}.")
        if len(prompt) == 0:
            raise ValueError("`prompt` is an empty list; pass at least one prompt.")
        if isinstance(negative_prompt, list) and len(negative_prompt) != len(prompt):
            raise ValueError(
                f"`negative_prompt` has {len(negative_prompt)} entries but `prompt` has {len(prompt)}; pass one "
                "negative prompt per prompt, or a single string."
            )
        if negative_prompt is not None and not isinstance(negative_prompt, (str, list)):
            raise ValueError(f"`negative_prompt` must be a string or a list of strings, got {negative_prompt!r}.")
        if not isinstance(num_videos_per_prompt, int) or num_videos_per_prompt < 1:
            raise ValueError(f"`num_videos_per_prompt` must be a positive integer, got {num_videos_per_prompt!r}.")
        self.video_tokenizer.validate_video_shape(num_frames, height, width)
        if not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"`top_k` must be an integer >= 0 (0 disables it), got {top_k!r}.")
        if not 0 < top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1], got {top_p!r}.")
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature!r}.")
        batch = len(prompt) * num_videos_per_prompt
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(
                f"`generator` is a list of {len(generator)}, but {len(prompt)} prompt(s) x {num_videos_per_prompt} "
                f"video(s) per prompt make {batch} videos; pass one generator per video, or a single generator."
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {list(OUTPUT_TYPES)}, got {output_type!r}.")
        if image is not None and video is not None:
            raise ValueError("Pass conditioning frames as `image` or as `video`, not both.")
        if callback_on_step_end_tensor_inputs is not None and not all(
            k in self._callback_tensor_inputs for k in callback_on_step_end_tensor_inputs
        ):
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` must be a subset of {self._callback_tensor_inputs}, got "
                f"{callback_on_step_end_tensor_inputs}."
            )
        return prompt

    def encode_prompt(self, prompts: list[str], max_sequence_length: int | None, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Text encoder states `(N, L, C)` and mask `(N, L)` for all prompts in one pass, right-padded together.

        Prompts over the text encoder's limit are truncated with a warning.
        """
        limit = min(self.tokenizer.model_max_length, getattr(self.text_encoder.config, "max_position_embeddings", 10**9))
        max_length = limit if max_sequence_length is None else min(max_sequence_length, limit)
        too_long = [p for p, ids in zip(prompts, self.tokenizer(prompts).input_ids) if len(ids) > max_length]
        if too_long:
            logger.warning(
                f"{len(too_long)} prompt(s) exceed the text encoder's limit of {max_length} tokens and were truncated, "
                f"e.g. {too_long[0][:80]!r}."
            )
        tokens = self.tokenizer(
            prompts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        states = self.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        return states, tokens.attention_mask

    def encode_conditioning_frames(self, image, video, height, width, num_prompts, num_videos_per_prompt, device):
        """Per-scale bits `(B, T_given, h_k, w_k, d)` of the given frames, encoded with the causal tokenizer.

        One clip serves every prompt; otherwise pass one clip per prompt.
        """
        if image is not None:
            frames_BCTHW = self.video_processor.preprocess(image, height=height, width=width)[:, :, None]
        else:
            frames_BCTHW = self.video_processor.preprocess_video(video, height=height, width=width)
        num_clips = frames_BCTHW.shape[0]
        if num_clips not in (1, num_prompts):
            name = "image" if image is not None else "video"
            raise ValueError(
                f"`{name}` holds {num_clips} clips for {num_prompts} prompts; pass one for all prompts or one per prompt."
            )
        frames_BCTHW = frames_BCTHW.to(device=device, dtype=self.video_tokenizer.dtype)
        bits = self.video_tokenizer.quantize(self.video_tokenizer.encode(frames_BCTHW).latents).bits
        repeats = num_videos_per_prompt * (num_prompts // num_clips)
        return [b.repeat_interleave(repeats, dim=0) for b in bits]

    # ------------------------------------------------------------------ sampling

    def _prepare_sampling(
        self, prompt, negative_prompt, num_frames, height, width, num_videos_per_prompt, guidance_scale, top_k, top_p,
        temperature, generator, image, video, output_type, max_sequence_length, callback_on_step_end_tensor_inputs,
    ) -> "_Sampling":  # fmt: skip
        """Check the inputs and do the work before the first forward pass: the text prefix and the given frames."""
        height = height or self.video_tokenizer.config.sample_size
        width = width or self.video_tokenizer.config.sample_size
        prompts = self.check_inputs(
            prompt, negative_prompt, num_frames, height, width, num_videos_per_prompt, top_k, top_p, temperature,
            generator, output_type, image, video, callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        device = self._execution_device
        f = self.video_tokenizer.config.spatial_compression_ratio
        num_latent_frames = self.video_tokenizer.num_latent_frames(num_frames)
        latent_size = (height // f, width // f)
        cache = self.transformer.init_cache(*latent_size)
        guidance_TK = guidance_table(guidance_scale, num_latent_frames, len(cache.scale_sizes))
        do_cfg = bool((guidance_TK != 1).any())

        # text prefix: conditional and unconditional prompts encoded once, in one batch
        if negative_prompt is None:
            negative_prompt = ""
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else negative_prompt
        text_states, text_mask = self.encode_prompt(prompts + negatives if do_cfg else prompts, max_sequence_length, device)

        given_bits = []
        if image is not None or video is not None:
            given_bits = self.encode_conditioning_frames(
                image, video, height, width, len(prompts), num_videos_per_prompt, device
            )
            if given_bits[0].shape[1] >= num_latent_frames:
                raise ValueError(
                    f"`num_frames` ({num_frames}) must be longer than the conditioning frames, which fill "
                    f"{given_bits[0].shape[1]} of its {num_latent_frames} latent frames."
                )
        return _Sampling(
            batch=len(prompts) * num_videos_per_prompt,
            num_latent_frames=num_latent_frames,
            latent_size=latent_size,
            cache=cache,
            guidance_TK=guidance_TK,
            do_cfg=do_cfg,
            text_states=text_states.repeat_interleave(num_videos_per_prompt, dim=0),
            text_mask=text_mask.repeat_interleave(num_videos_per_prompt, dim=0),
            given_bits=given_bits,
            sampling_options=(top_k, top_p, temperature, generator),
            device=device,
        )

    def _sample_latent_frames(
        self, s: "_Sampling", callback_on_step_end=None, callback_on_step_end_tensor_inputs=None
    ) -> Iterator[torch.Tensor]:
        """Sample frame after frame, scale after scale; after each latent frame, yield all `latents` `(B, d, T', h,
        w)` (frames not sampled yet are zeros)."""
        quantizer = self.video_tokenizer.quantizer
        scale_sizes = s.cache.scale_sizes
        num_given = s.given_bits[0].shape[1] if s.given_bits else 0
        latents = torch.zeros(s.batch, quantizer.latent_bits, s.num_latent_frames, *s.latent_size, device=s.device)
        scale_input = None
        with self.progress_bar(total=s.num_latent_frames * len(scale_sizes)) as progress_bar:
            for frame in range(s.num_latent_frames):
                for scale, size in enumerate(scale_sizes):
                    model_input = None if scale_input is None else torch.cat([scale_input] * (1 + s.do_cfg))
                    logits = self.transformer(model_input, s.text_states, s.text_mask, cache=s.cache).logits.float()
                    if s.do_cfg:
                        cond, uncond = logits.chunk(2)
                        logits = uncond + s.guidance_TK[frame, scale].item() * (cond - uncond)
                    if frame < num_given:
                        bits_BhwD = s.given_bits[scale][:, frame]
                    else:
                        bits_BhwD = sample_bits(logits, *s.sampling_options).reshape(s.batch, *size, -1)
                    codes_BdHW = quantizer.codes_from_bits(bits_BhwD).permute(0, 3, 1, 2)
                    latents[:, :, frame] += quantizer.upsample(codes_BdHW, s.latent_size)

                    if callback_on_step_end is not None:
                        available = {"latents": latents, "logits": logits}
                        callback_kwargs = {k: available[k] for k in callback_on_step_end_tensor_inputs or []}
                        step = frame * len(scale_sizes) + scale
                        callback_outputs = callback_on_step_end(self, step, (frame, scale), callback_kwargs)
                        latents = (callback_outputs or {}).get("latents", latents)

                    # the next block's input: this frame's reconstruction so far, at the next scale's size (§3)
                    next_size = scale_sizes[(scale + 1) % len(scale_sizes)]
                    scale_input = quantizer.downsample(latents[:, :, frame], next_size).permute(0, 2, 3, 1)
                    progress_bar.update()
                yield latents

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_frames: int = 17,
        height: int | None = None,
        width: int | None = None,
        num_videos_per_prompt: int = 1,
        guidance_scale: float | str | list | torch.Tensor = TEXT_TO_VIDEO,
        top_k: int = 0,
        top_p: float = 1.0,
        temperature: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        image: Any = None,
        video: Any = None,
        output_type: str = "np",
        return_dict: bool = True,
        max_sequence_length: int | None = None,
        decode_chunk_size: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> VideoARPipelineOutput | tuple:
        """Generate videos.

        Args:
            prompt: a prompt or a list of prompts.
            negative_prompt: the unconditional prompt(s) for classifier-free guidance; the empty prompt by default.
            num_frames: pixel frames, `1 + k * temporal_compression_ratio` (conditioning frames included).
            height, width: pixel size, multiples of the spatial compression; the tokenizer's `sample_size` by default.
            num_videos_per_prompt: videos per prompt.
            guidance_scale: a number, a `(latent frames, scales)` table, or a schedule name: `"text-to-video"`
                (falls 5 -> 3, the default) or `"class-conditional"` (rises 1 -> 5 -> 10) (PAPER.md §8).
                Guidance runs the conditional and unconditional batch in one forward pass; a constant 1 skips it.
            top_k, top_p, temperature: per-bit sampling, see `sample_bits`. `top_k=0` and `top_p=1` disable them.
            generator: a generator, or one per video for per-video reproducibility.
            image, video: conditioning frames (image-to-video, video continuation). They are encoded by the causal
                tokenizer and the model continues from them; their count must be `1 + k * temporal_compression_ratio`.
            output_type: `"np"`, `"pil"`, `"pt"` or `"latent"`.
            max_sequence_length: text token limit, capped at the text encoder's; longer prompts are truncated with a
                warning.
            decode_chunk_size: latent frames the causal tokenizer decodes at a time (same frames, less memory for
                long videos); all at once by default.
            callback_on_step_end: `callback(pipe, step, (frame, scale), callback_kwargs)` after each forward pass;
                may return a dict replacing `latents`.
            callback_on_step_end_tensor_inputs: keys of `callback_kwargs`, from `["latents", "logits"]`.
        """
        sampling = self._prepare_sampling(
            prompt, negative_prompt, num_frames, height, width, num_videos_per_prompt, guidance_scale, top_k, top_p,
            temperature, generator, image, video, output_type, max_sequence_length, callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        for latents in self._sample_latent_frames(sampling, callback_on_step_end, callback_on_step_end_tensor_inputs):
            pass
        if output_type == "latent":
            frames = latents
        else:
            latents = latents.to(self.video_tokenizer.dtype)
            sample = self.video_tokenizer.decode(latents, chunk_size=decode_chunk_size).sample
            frames = self.video_processor.postprocess_video(sample.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return VideoARPipelineOutput(frames=frames)

    @torch.no_grad()
    def stream(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_frames: int = 17,
        height: int | None = None,
        width: int | None = None,
        num_videos_per_prompt: int = 1,
        guidance_scale: float | str | list | torch.Tensor = TEXT_TO_VIDEO,
        top_k: int = 0,
        top_p: float = 1.0,
        temperature: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        image: Any = None,
        video: Any = None,
        output_type: str = "np",
        max_sequence_length: int | None = None,
    ) -> Iterator[np.ndarray | torch.Tensor | list[list[PIL.Image.Image]]]:
        """Generate like `__call__`, but yield each latent frame's pixel frames as soon as that frame is sampled.

        The causal tokenizer decodes chunk by chunk with its temporal cache, so the chunks, concatenated along the
        frame axis, equal `__call__(...).frames` for the same arguments and seeds. The first chunk holds one frame,
        each later one `temporal_compression_ratio` frames; conditioning frames come back as well. Chunks are shaped
        as `__call__`'s frames for `output_type` `"np"`, `"pt"` or `"pil"`. Inputs are checked on the call, before the
        first chunk is asked for.
        """
        if output_type == "latent":
            raise ValueError("`stream` yields pixel frames: `output_type` must be one of ['np', 'pil', 'pt'].")
        sampling = self._prepare_sampling(
            prompt, negative_prompt, num_frames, height, width, num_videos_per_prompt, guidance_scale, top_k, top_p,
            temperature, generator, image, video, output_type, max_sequence_length, None,
        )  # fmt: skip
        return self._decode_as_sampled(sampling, output_type)

    @torch.no_grad()
    def _decode_as_sampled(self, sampling: "_Sampling", output_type: str) -> Iterator:
        with causal_streaming(self.video_tokenizer.decoder):
            for frame, latents in enumerate(self._sample_latent_frames(sampling)):
                chunk = latents[:, :, frame : frame + 1].to(self.video_tokenizer.dtype)
                sample = self.video_tokenizer.decode(chunk).sample  # continues the stream: no chunk_size
                yield self.video_processor.postprocess_video(sample.float(), output_type=output_type)
        self.maybe_free_model_hooks()


@dataclass
class _Sampling:
    """What one generation carries from its preparation into its sampling loop."""

    batch: int
    num_latent_frames: int
    latent_size: tuple[int, int]
    cache: Any
    guidance_TK: torch.Tensor
    do_cfg: bool
    text_states: torch.Tensor
    text_mask: torch.Tensor
    given_bits: list[torch.Tensor]
    sampling_options: tuple
    device: torch.device


def _check_components_agree(video_tokenizer, transformer, text_encoder) -> None:
    """Configs that must match across components; a mismatch is named with both values."""
    pairs = [
        ("latent bits", "video_tokenizer.config.latent_channels", video_tokenizer.config.latent_channels,
         "transformer.config.latent_bits", transformer.config.latent_bits),
        ("scale schedule", "video_tokenizer.config.scale_schedule", list(video_tokenizer.config.scale_schedule),
         "transformer.config.scale_schedule", list(transformer.config.scale_schedule)),
        ("text hidden size", "text_encoder.config.hidden_size", getattr(text_encoder.config, "hidden_size", None),
         "transformer.config.text_hidden_size", transformer.config.text_hidden_size),
    ]  # fmt: skip
    for what, name_a, a, name_b, b in pairs:
        if a != b:
            raise ValueError(f"The components disagree on the {what}: `{name_a}` is {a} but `{name_b}` is {b}.")


def _check_weight_files(folder: str) -> None:
    """Fail early, naming the file, when a model component's safetensors weights are missing or unreadable."""
    index_path = Path(folder) / "model_index.json"
    if not index_path.is_file():
        raise ValueError(f"{folder!r} is not a VideoAR pipeline folder: it has no `model_index.json`.")
    for name, spec in json.loads(index_path.read_text()).items():
        if not (isinstance(spec, list) and name in ("video_tokenizer", "transformer", "text_encoder")):
            continue
        weights = sorted((Path(folder) / name).glob("*.safetensors"))
        if not weights:
            raise ValueError(f"Missing weights for `{name}`: no `*.safetensors` file in {Path(folder) / name}.")
        for path in weights:
            try:
                with safe_open(path, framework="pt") as f:
                    f.keys()
            except Exception as error:  # safetensors raises its own error types for corrupt headers
                raise ValueError(f"Corrupt weight file {path}: {error}") from error
