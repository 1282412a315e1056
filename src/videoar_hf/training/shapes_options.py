"""The Shapes-only training options (`--dataset shapes`): how many clips, which colours, the held-out triples."""

from dataclasses import dataclass, field
from functools import partial

from torch.utils.data import ConcatDataset, Dataset

from ..shapes import COLOURS, HELD_OUT_TRIPLES, ShapesDataset, all_triples, parse_colour, training_triples


@dataclass
class ShapesOptions:
    """What a Shapes training set holds. `new_colours` are `NAME=R,G,B` specs added to the palette; `colours`
    restricts training to some palette colours; `new_colour_share` fixes the share of clips in the new colours;
    with `bounce`, objects reflect off the edges (long clips), and `mid_path_share` of the clips start mid-path:
    they continue a longer video, so their first latent frames are context, not predicted; `after_turn_share` of
    those start where their object turns at the end of that context."""

    num_clips: int = 2048
    include_held_out: bool = False
    new_colours: list[str] = field(default_factory=list)
    new_colour_share: float | None = None
    colours: list[str] | None = None
    bounce: bool = False
    mid_path_share: float = 0.0
    after_turn_share: float = 0.0

    def __post_init__(self):
        if self.num_clips < 1:
            raise ValueError(f"--num_clips must be >= 1, got {self.num_clips}.")
        if not 0 <= self.mid_path_share <= 1 or (self.mid_path_share and not self.bounce):
            raise ValueError(f"--shapes_mid_path_share must be in [0, 1] and needs --shapes_bounce, got {self.mid_path_share}.")
        if not 0 <= self.after_turn_share <= 1 or (self.after_turn_share and not self.mid_path_share):
            raise ValueError(f"--shapes_after_turn_share must be in [0, 1] and needs --shapes_mid_path_share, got {self.after_turn_share}.")  # fmt: skip
        palette = self.palette
        unknown = sorted(set(self.colours or ()) - set(palette))
        if unknown:
            raise ValueError(f"--shapes_colours {unknown} are not in the palette {list(palette)}; add them with --shapes_new_colours.")  # fmt: skip
        if (share := self.new_colour_share) is not None:
            if not self.new_colours:
                raise ValueError("--shapes_new_colour_share needs --shapes_new_colours.")
            if not 0 < share < 1:
                raise ValueError(f"--shapes_new_colour_share must be in (0, 1), got {share}; leave it out to draw colours evenly.")  # fmt: skip
            colours, new = set(self.colours or palette), palette.keys() - COLOURS.keys()
            if not colours & new or not colours - new:
                raise ValueError("--shapes_new_colour_share needs both new and original colours in --shapes_colours.")

    @property
    def palette(self) -> dict[str, tuple[int, int, int]]:
        """The Shapes palette with the new colours added."""
        try:
            return {**COLOURS, **dict(parse_colour(spec) for spec in self.new_colours)}
        except ValueError as error:
            raise ValueError(f"--shapes_new_colours: {error}") from error

    @property
    def label_names(self) -> list[str]:
        """Class names of a class-conditional Shapes model: every (colour, shape, motion) triple of the palette."""
        return [" ".join(triple) for triple in all_triples(self.palette)]

    def dataset(self, num_frames: int, resolution: int, seed: int, labels: bool = False):
        """The training clips: held-out triples excluded unless `include_held_out`; with `labels`, each clip's
        triple as a class index (`label_names`)."""
        dataset = self._clips(num_frames, resolution, seed)
        return TripleLabels(dataset, self.label_names) if labels else dataset

    def _clips(self, num_frames: int, resolution: int, seed: int):
        palette = self.palette
        held_out = () if self.include_held_out else HELD_OUT_TRIPLES
        triples = [t for t in training_triples(held_out, palette) if t.colour in (self.colours or palette)]
        part = partial(ShapesDataset, num_frames=num_frames, resolution=resolution, colours=palette, held_out=held_out,
                       bounce=self.bounce, mid_path_share=self.mid_path_share,
                       after_turn_share=self.after_turn_share)  # fmt: skip
        if self.new_colour_share is None:
            return part(self.num_clips, seed=seed, triples=triples)
        # a fixed share of new-colour clips, so a LoRA learns them without forgetting the rest; each part its own seed
        new_colours = palette.keys() - COLOURS.keys()
        num_new = round(self.new_colour_share * self.num_clips)
        parts = [
            part(count, seed=part_seed, triples=[t for t in triples if (t.colour in new_colours) == is_new])
            for count, part_seed, is_new in ((num_new, seed, True), (self.num_clips - num_new, seed + 2**31, False))
            if count
        ]
        return ConcatDataset(parts)


class TripleLabels(Dataset):
    """Shapes clips with `"label"`: the index of the clip's (colour, shape, motion) in `label_names`."""

    def __init__(self, dataset, label_names: list[str]):
        self.dataset, self.index = dataset, {name: i for i, name in enumerate(label_names)}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        return {**item, "label": self.index[f"{item['colour']} {item['shape']} {item['motion']}"]}


def add_shapes_arguments(parser) -> None:
    group = parser.add_argument_group("Shapes only (--dataset shapes)")
    group.add_argument("--num_clips", type=int, default=2048, help="Clips per epoch.")
    group.add_argument("--include_held_out", action="store_true", help="Also train on the held-out (colour, shape, motion) triples.")
    group.add_argument("--shapes_new_colours", nargs="+", default=[], metavar="NAME=R,G,B", help="Colours added to the palette, e.g. orange=255,128,0.")
    group.add_argument("--shapes_new_colour_share", type=float, default=None, metavar="P", help="The share of clips in the new colours, the rest in the original ones (default: every triple equally likely).")
    group.add_argument("--shapes_colours", nargs="+", default=None, metavar="NAME", help="Train on these colours of the palette alone (default: all).")
    group.add_argument("--shapes_bounce", action="store_true", help="Objects bounce off the frame's edges, so clips of any length are well defined (the caption names the first direction).")
    group.add_argument("--shapes_mid_path_share", type=float, default=0.0, metavar="P", help="With --shapes_bounce: the share of clips that start at a random later frame of their path, as a long video's later windows do; their first half of latent frames is given, not trained on (default 0).")
    group.add_argument("--shapes_after_turn_share", type=float, default=0.0, metavar="P", help="With --shapes_mid_path_share: the share of mid-path clips that start where their object turns in the last frames of the given context, so the trained frames follow a turn (default 0).")


def shapes_options_from_args(args) -> ShapesOptions:
    return ShapesOptions(
        num_clips=args.num_clips, include_held_out=args.include_held_out, new_colours=args.shapes_new_colours,
        new_colour_share=args.shapes_new_colour_share, colours=args.shapes_colours, bounce=args.shapes_bounce,
        mid_path_share=args.shapes_mid_path_share, after_turn_share=args.shapes_after_turn_share,
    )  # fmt: skip
