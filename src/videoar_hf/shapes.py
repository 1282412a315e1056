"""Shapes: a synthetic text-to-video dataset of one coloured shape sliding across a black frame.

Every clip is drawn with numpy in exact palette colours on pure black, so an evaluator can recover the colour,
shape and motion of a generated clip by matching pixels, and `ShapesClip` carries the ground truth to match.

Geometry. Sizes (`SIZE_RANGE`, integer side or diameter) and speeds (`SPEED_RANGE`, px per frame, uniform) are
given for 64x64 and scale with `resolution / 64`. The object moves along a continuous path and is drawn at its
position rounded half up to whole pixels, so it keeps its exact pixel shape in every frame and moves by
floor(speed) or ceil(speed) pixels per frame. Coordinates are pixel indices: x is the column, y the row (down).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    import datasets

# colour name -> (r, g, b)
Palette = Mapping[str, tuple[int, int, int]]


class Triple(NamedTuple):
    """One kind of clip, in caption order: "a {colour} {shape} moving {motion}"."""

    colour: str
    shape: str
    motion: str


SHAPES = ("circle", "square", "triangle")
# extend with a copy, e.g. `{**COLOURS, "orange": (255, 128, 0)}`, and pass it as `colours=`
COLOURS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
}
MOTIONS = ("left", "right", "up", "down")
# the project's standard held-out triples: never in the default training data, used to test generalisation
HELD_OUT_TRIPLES = (
    Triple("green", "triangle", "up"),
    Triple("blue", "circle", "left"),
    Triple("yellow", "square", "down"),
    Triple("white", "triangle", "right"),
    Triple("red", "square", "up"),
)

REFERENCE_RESOLUTION = 64
SIZE_RANGE = (10, 18)
SPEED_RANGE = (1.0, 2.0)
# a bouncing object first travels this many frames (the plain clips' length) in its caption's direction
FIRST_LEG_FRAMES = 17
# a mid-path clip starts at a frame drawn from 1..this of its object's path: at 1-2 px per frame, at least one whole
# round trip across the frame, so every phase of the bounce is drawn
MAX_START_FRAME = 128
# an after-turn clip's object turns in one of these frames: the last of a 15-frame given context (8 latent frames at
# tau 2), so that its first predicted frames follow a turn, as they often do in a long video's later windows
AFTER_TURN_FRAMES = range(8, 14)

# (dx, dy) per frame: y grows downward, as in image rows
_DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

CAPTION_TEMPLATES = (
    "a {colour} {shape} moving {direction}",
    "{colour} {shape} slides {towards}",
    "a {colour} {shape} travels {adverb}",
    "the {colour} {shape} drifts {direction} across a black background",
    "a {shape} in {colour}, heading {adverb}",
    "one {colour} {shape} glides {towards} on black",
)
SHAPE_NOUNS = {
    "circle": ("circle", "round disc", "disc"),
    "square": ("square", "square block", "box"),
    "triangle": ("triangle", "triangular shape"),
}
_MOTION_WORDS = {
    "left": {"direction": "left", "adverb": "leftward", "towards": "to the left"},
    "right": {"direction": "right", "adverb": "rightward", "towards": "to the right"},
    "up": {"direction": "up", "adverb": "upward", "towards": "to the top"},
    "down": {"direction": "down", "adverb": "downward", "towards": "to the bottom"},
}


@dataclass
class ShapesClip:
    """One clip and its ground truth.

    `video` is uint8 `(T, H, W, 3)`; `centres` is float `(T, 2)`, the (x, y) centre of the object's bounding box
    in each frame (the mean pixel position of a circle or square); `speed` is in px per frame. A clip shows frames
    `start_frame..` of its object's path; the caption and `motion` describe the path from frame 0.
    """

    video: np.ndarray
    caption: str
    colour: str
    shape: str
    motion: str
    size: int
    speed: float
    centres: np.ndarray
    start_frame: int = 0

    @property
    def triple(self) -> Triple:
        return Triple(self.colour, self.shape, self.motion)

    @property
    def masks(self) -> np.ndarray:
        """`(T, H, W)` bool: where the object is. Exact, since the background is black and no colour is."""
        return self.video.any(axis=-1)

    @property
    def axis(self) -> int:
        """The axis the object moves along: 0 (x) for left and right, 1 (y) for up and down."""
        return 0 if self.motion in ("left", "right") else 1


def parse_colour(spec: str) -> tuple[str, tuple[int, int, int]]:
    """`"orange=255,128,0"` -> `("orange", (255, 128, 0))`, for command-line flags that add colours."""
    name, _, rgb = spec.partition("=")
    try:
        values = tuple(int(v) for v in rgb.split(","))
    except ValueError:
        values = ()
    if not name.isidentifier() or len(values) != 3 or not all(0 <= v <= 255 for v in values) or not any(values):
        raise ValueError(f"a colour is NAME=R,G,B with R, G, B in 0..255, not all 0 (e.g. orange=255,128,0); got {spec!r}")
    return name, values


def all_triples(colours: Palette = COLOURS) -> list[Triple]:
    """Every (colour, shape, motion) combination of the palette."""
    return [Triple(c, s, m) for c in colours for s in SHAPES for m in MOTIONS]


def training_triples(
    held_out: Sequence[Triple] = HELD_OUT_TRIPLES, colours: Palette = COLOURS
) -> list[Triple]:
    """Every triple of the palette except those in `held_out`."""
    held_out = _as_triples(held_out, colours, "held_out")
    return [triple for triple in all_triples(colours) if triple not in held_out]


def caption_for(colour: str, shape: str, motion: str, rng: np.random.Generator) -> str:
    """A caption in one of the `CAPTION_TEMPLATES`, with one of the `SHAPE_NOUNS` of `shape`."""
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    nouns = SHAPE_NOUNS[shape]
    return template.format(colour=colour, shape=nouns[rng.integers(len(nouns))], **_MOTION_WORDS[motion])


def shape_mask(shape: str, size: int) -> np.ndarray:
    """`(size, size)` bool footprint of `shape`; it touches all four sides of its box."""
    _check_choice("shape", shape, SHAPES)
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    centre = (size - 1) / 2
    y, x = np.mgrid[:size, :size]
    if shape == "circle":
        return (x - centre) ** 2 + (y - centre) ** 2 <= (size / 2) ** 2
    # triangle pointing up: row y spans half-width (y + 1) / 2 around the centre, so the base fills the bottom row
    return np.abs(x - centre) <= (y + 1) / 2


def render_clip(
    colour: str,
    shape: str,
    motion: str,
    *,
    size: int,
    speed: float,
    start: tuple[float, float],
    num_frames: int = 17,
    resolution: int = 64,
    colours: Palette = COLOURS,
    caption: str | None = None,
    bounce: bool = False,
    start_frame: int = 0,
) -> ShapesClip:
    """Draw one clip: the object's centre is `start` (x, y) at frame 0 and moves `speed` px per frame.

    `caption` defaults to the first template. Raises ValueError if the object leaves the frame; with `bounce`, it
    reflects off the frame's edges instead, so a clip of any length is well defined (`motion` is the first direction),
    and the clip may show the path from a later `start_frame` on (a clip that continues a longer video).
    """
    _check_palette(colours)
    _check_triple(Triple(colour, shape, motion), colours, "render_clip")
    _check_num_frames(num_frames)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if speed <= 0:
        raise ValueError(f"speed must be > 0 px per frame, got {speed}")
    if start_frame < 0 or (start_frame and not bounce):
        raise ValueError(
            f"start_frame must be >= 0, and 0 unless bounce=True (the path leaves the frame), got {start_frame}"
        )
    offsets = np.arange(start_frame, start_frame + num_frames)[:, None] * speed * np.array(_DIRECTIONS[motion])
    path = np.asarray(start) - (size - 1) / 2 + offsets
    if bounce:
        path = _reflect(path, resolution - size)
    corners = np.floor(path + 0.5).astype(int)
    if corners.min() < 0 or corners.max() + size > resolution:
        raise ValueError(f"start={start} with size={size}, speed={speed} leaves the {resolution}x{resolution} frame")
    if caption is None:
        caption = CAPTION_TEMPLATES[0].format(colour=colour, shape=shape, **_MOTION_WORDS[motion])
    footprint = shape_mask(shape, size)
    video = np.zeros((num_frames, resolution, resolution, 3), dtype=np.uint8)
    for frame, (x, y) in zip(video, corners):
        frame[y : y + size, x : x + size][footprint] = colours[colour]
    return ShapesClip(
        video=video,
        caption=caption,
        colour=colour,
        shape=shape,
        motion=motion,
        size=size,
        speed=float(speed),
        centres=corners + (size - 1) / 2,
        start_frame=start_frame,
    )


def sample_clip(
    rng: np.random.Generator,
    *,
    triples: Sequence[Triple] | None = None,
    num_frames: int = 17,
    resolution: int = 64,
    colours: Palette = COLOURS,
    bounce: bool = False,
    start_frame: int = 0,
) -> ShapesClip:
    """A random clip: triple from `triples` (default: all), then size, speed, start and caption, from `rng`. With
    `bounce`, the object reflects off the edges (any `num_frames`) after a first leg of `FIRST_LEG_FRAMES` frames in
    the caption's direction, and the clip shows its path from `start_frame` on; otherwise its whole path fits the
    frame."""
    triples = all_triples(colours) if triples is None else _as_triples(triples, colours, "triples")
    if not triples:
        raise ValueError("triples must not be empty")
    _check_room(num_frames, resolution, bounce)
    triple = triples[rng.integers(len(triples))]
    min_size, max_size = _size_range(resolution)
    size = int(rng.integers(min_size, max_size + 1))
    speed = float(rng.uniform(*_speed_range(resolution)))
    # the first frame's corner leaves room for the whole path; a bouncing object's for its first leg, so that the
    # direction the caption names is what the first frames show
    leg_frames = min(num_frames, FIRST_LEG_FRAMES) if bounce else num_frames
    travel = min(speed * (leg_frames - 1), resolution - size) * np.array(_DIRECTIONS[triple.motion])
    corner = rng.uniform(np.maximum(0, -travel), resolution - size - np.maximum(0, travel))
    return render_clip(
        *triple,
        size=size,
        speed=speed,
        start=tuple(corner + (size - 1) / 2),
        num_frames=num_frames,
        resolution=resolution,
        colours=colours,
        caption=caption_for(*triple, rng),
        bounce=bounce,
        start_frame=start_frame,
    )


def turn_frames(positions: np.ndarray) -> np.ndarray:
    """The frames at which a path along one axis, `(T,)`, reverses: where the sign of its step changes."""
    steps = np.sign(np.diff(positions))
    return np.nonzero(steps[1:] != steps[:-1])[0] + 1


def _reflect(path: np.ndarray, limit: float) -> np.ndarray:
    """Positions folded into [0, limit], as a point that bounces off both ends: a triangle wave of period 2 limit."""
    if limit <= 0:
        return np.zeros_like(path)
    folded = np.mod(path, 2 * limit)
    return np.where(folded > limit, 2 * limit - folded, folded)


class ShapesDataset(Dataset):
    """`num_clips` Shapes clips; item i is the same clip for the same `seed`, whatever else is read.

    `triples` defaults to every triple of `colours` except `held_out`; with `bounce`, objects reflect off the edges
    and clips may be any length, and a share `mid_path_share` of them starts at a random frame of its object's path
    (1..`MAX_START_FRAME`), its caption still naming the path's first direction: clips that continue a longer video,
    as a long generation's later windows do. A share `after_turn_share` of those starts instead where its object
    turns in one of `AFTER_TURN_FRAMES`, the end of the given context, so that the predicted frames follow a turn.
    An item is the model-facing dict
    `{"video": float32 (3, T, H, W) in [-1, 1], "text": caption, "colour", "shape", "motion", "continues": bool}`
    (`continues`: the clip starts mid-path); `clip(i)` gives the `ShapesClip` with its ground truth.
    """

    def __init__(
        self,
        num_clips: int,
        seed: int = 0,
        triples: Sequence[Triple] | None = None,
        num_frames: int = 17,
        resolution: int = 64,
        colours: Palette = COLOURS,
        held_out: Sequence[Triple] = HELD_OUT_TRIPLES,
        bounce: bool = False,
        mid_path_share: float = 0.0,
        after_turn_share: float = 0.0,
    ):
        if num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}")
        if not 0 <= mid_path_share <= 1 or (mid_path_share and not bounce):
            raise ValueError(f"mid_path_share must be in [0, 1], and 0 unless bounce=True, got {mid_path_share}")
        if not 0 <= after_turn_share <= 1 or (after_turn_share and not mid_path_share):
            raise ValueError(f"after_turn_share must be in [0, 1], and 0 unless mid_path_share > 0, got {after_turn_share}")  # fmt: skip
        _check_palette(colours)
        _check_room(num_frames, resolution, bounce)
        self.bounce = bounce
        self.mid_path_share = mid_path_share
        self.after_turn_share = after_turn_share
        self.held_out = _as_triples(held_out, colours, "held_out")
        self.triples = (
            training_triples(self.held_out, colours) if triples is None else _as_triples(triples, colours, "triples")
        )
        if not self.triples:
            raise ValueError("triples must not be empty: give some, or hold out fewer")
        self.num_clips = num_clips
        self.seed = seed
        self.num_frames = num_frames
        self.resolution = resolution
        self.colours = colours

    def __len__(self) -> int:
        return self.num_clips

    def clip(self, index: int) -> ShapesClip:
        """Clip `index` with its ground truth, drawn from a generator seeded by `(seed, index)` alone."""
        index = range(self.num_clips)[index]  # raises IndexError out of range, wraps negatives
        start_frame = 0
        if self.mid_path_share:  # its own generator, so that the clips of a dataset without it stay as they were
            rng = np.random.default_rng([self.seed, index, 1])
            start_frame = int(rng.integers(1, MAX_START_FRAME + 1)) if rng.random() < self.mid_path_share else 0
            if start_frame and self.after_turn_share and rng.random() < self.after_turn_share:
                return self._clip_after_turn(index, rng)
        return self._sample(index, self.num_frames, start_frame)

    def _sample(self, index: int, num_frames: int, start_frame: int = 0) -> ShapesClip:
        rng = np.random.default_rng([self.seed, index])
        return sample_clip(rng, triples=self.triples, num_frames=num_frames, resolution=self.resolution,
                           colours=self.colours, bounce=self.bounce, start_frame=start_frame)  # fmt: skip

    def _clip_after_turn(self, index: int, rng: np.random.Generator) -> ShapesClip:
        """Clip `index`'s object from a start at which it turns in one of `AFTER_TURN_FRAMES` of the clip."""
        path = self._sample(index, MAX_START_FRAME + self.num_frames)
        turns = turn_frames(path.centres[:, path.axis])
        starts = [t - f for t in turns for f in AFTER_TURN_FRAMES if 1 <= t - f <= MAX_START_FRAME]
        start = int(rng.choice(starts)) if starts else int(rng.integers(1, MAX_START_FRAME + 1))
        shown = slice(start, start + self.num_frames)
        return replace(path, video=path.video[shown].copy(), centres=path.centres[shown].copy(), start_frame=start)

    def __getitem__(self, index: int) -> dict:
        clip = self.clip(index)
        video = torch.from_numpy(clip.video).permute(3, 0, 1, 2).float() / 127.5 - 1
        return {"video": video, "text": clip.caption, "colour": clip.colour, "shape": clip.shape, "motion": clip.motion,
                "continues": clip.start_frame > 0}  # fmt: skip

    def to_hf_dataset(self) -> "datasets.Dataset":
        """All clips as an in-memory `datasets.Dataset`, e.g. to `save_to_disk` or push to the Hub.

        Columns: "video" uint8 `(T, H, W, 3)` as `Array4D`, "text", "colour", "shape", "motion", and "held_out"
        (the clip's triple is in `held_out`). The numpy format widens integers: read "video" with
        `.with_format("numpy", columns=["video"], dtype=np.uint8)` to keep uint8.
        """
        import datasets  # a training extra, not a core dependency

        video_shape = (self.num_frames, self.resolution, self.resolution, 3)
        features = datasets.Features(
            {
                "video": datasets.Array4D(video_shape, "uint8"),
                "text": datasets.Value("string"),
                "colour": datasets.Value("string"),
                "shape": datasets.Value("string"),
                "motion": datasets.Value("string"),
                "held_out": datasets.Value("bool"),
            }
        )
        clips = [self.clip(i) for i in range(self.num_clips)]
        columns = {
            "video": np.stack([clip.video for clip in clips]),  # one array converts to Arrow faster than a list
            "text": [clip.caption for clip in clips],
            "colour": [clip.colour for clip in clips],
            "shape": [clip.shape for clip in clips],
            "motion": [clip.motion for clip in clips],
            "held_out": [clip.triple in self.held_out for clip in clips],
        }
        return datasets.Dataset.from_dict(columns, features=features)


def _size_range(resolution: int) -> tuple[int, int]:
    # int(x + 0.5) rounds half up; round() would round half to even
    low, high = (max(1, int(size * resolution / REFERENCE_RESOLUTION + 0.5)) for size in SIZE_RANGE)
    return low, high


def _speed_range(resolution: int) -> tuple[float, float]:
    low, high = (speed * resolution / REFERENCE_RESOLUTION for speed in SPEED_RANGE)
    return low, high


def _check_choice(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _check_triple(triple: Triple, colours: Palette, source: str) -> None:
    for field, allowed in zip(Triple._fields, (colours, SHAPES, MOTIONS)):
        _check_choice(f"{source}: {field}", getattr(triple, field), allowed)


def _as_triples(triples: Sequence, colours: Palette, source: str) -> list[Triple]:
    """Validate the argument `source` as a list of triples of `colours`."""
    triples = [Triple(*triple) for triple in triples]
    for triple in triples:
        _check_triple(triple, colours, source)
    return triples


def _check_palette(colours: Palette) -> None:
    for name, rgb in colours.items():
        if len(rgb) != 3 or not all(0 <= value <= 255 for value in rgb) or not any(rgb):
            raise ValueError(f"colours[{name!r}] must be a non-black (r, g, b) in 0..255, got {rgb}")


def _check_num_frames(num_frames: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")


def _check_room(num_frames: int, resolution: int, bounce: bool = False) -> None:
    """Raise ValueError unless the largest, fastest object fits its whole path into the frame (with `bounce`: fits
    the frame at all)."""
    _check_num_frames(num_frames)
    size, speed = _size_range(resolution)[1], _speed_range(resolution)[1]
    needed = size + (0 if bounce else speed * (num_frames - 1))
    if needed > resolution:
        raise ValueError(
            f"resolution={resolution} is too small for num_frames={num_frames}: the largest object ({size} px) "
            f"moving {speed:g} px per frame needs {needed:g} px"
        )
