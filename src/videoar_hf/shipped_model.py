"""The VideoAR-Shapes model that ships inside the package, trained by `examples/shapes/` (model card:
`model_cards/videoar-shapes.md`)."""

from pathlib import Path

SHIPPED_MODEL_DIR = Path(__file__).parent / "shipped" / "videoar-shapes"


def shipped_model_path() -> Path:
    """The folder of the shipped pipeline, for `VideoARPipeline.from_pretrained(shipped_model_path())`.

    Raises `FileNotFoundError` when this installation has none (a source checkout before the model was trained).
    """
    if not (SHIPPED_MODEL_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"No shipped VideoAR-Shapes model in {SHIPPED_MODEL_DIR}: train it with examples/shapes/recipe.sh, or pass "
            "a model folder or Hub id."
        )
    return SHIPPED_MODEL_DIR
