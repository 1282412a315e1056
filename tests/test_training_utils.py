import json

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from videoar_hf.training import (
    CheckpointManager,
    LossHistory,
    ResumableBatchSampler,
    Stage,
    StageSchedule,
    load_stages,
)


def test_load_stages_from_yaml_and_json(tmp_path):
    (tmp_path / "stages.yaml").write_text(
        "stages:\n"
        "  - {name: I, resolution: 16, num_frames: 5, steps: 4, batch_size: 2, learning_rate: 1.0e-3, image_ratio: 0.5}\n"
        "  - {name: II, resolution: 32, num_frames: 9, steps: 6, batch_size: 2, learning_rate: 5.0e-4}\n"
    )
    stages = load_stages(tmp_path / "stages.yaml")
    assert [s.name for s in stages] == ["I", "II"] and stages[0].image_ratio == 0.5 and stages[1].image_ratio == 0
    (tmp_path / "stages.json").write_text(json.dumps({"stages": [vars(s) for s in stages]}))
    assert load_stages(tmp_path / "stages.json") == stages


@pytest.mark.parametrize(
    "content, match",
    [
        ({"stages": []}, "non-empty list"),
        ({"stages": [{"resolution": 16}]}, "missing fields"),
        ({"stages": [{"name": "a", "resolution": 16, "num_frames": 5, "steps": 4, "batch_size": 2,
                      "learning_rate": 1e-3, "colour": "red"}]}, "unknown fields.*colour"),
        ({"stages": [{"name": "a", "resolution": 16, "num_frames": 5, "steps": 0, "batch_size": 2,
                      "learning_rate": 1e-3}]}, "`steps`"),
    ],
)  # fmt: skip
def test_bad_stage_files(tmp_path, content, match):
    path = tmp_path / "stages.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match):
        load_stages(path)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_stages(tmp_path / "missing.yaml")


def test_stage_schedule_warms_up_and_decays_per_stage():
    stages = [Stage("I", 16, 5, 10, 2, 1e-3, warmup_steps=2), Stage("II", 32, 9, 5, 2, 5e-4)]
    schedule = StageSchedule(stages)
    assert schedule.total_steps == 15
    assert schedule.locate(0) == (0, 0) and schedule.locate(9) == (0, 9) and schedule.locate(10) == (1, 0)
    assert schedule.lr_at(0) == pytest.approx(5e-4) and schedule.lr_at(1) == pytest.approx(1e-3)
    assert schedule.lr_at(10) == pytest.approx(5e-4), "stage II restarts at its own peak"
    assert schedule.lr_at(14) < schedule.lr_at(11)


def test_resumable_batches_continue_where_they_stopped():
    full = list(ResumableBatchSampler(10, 3, num_batches=8, seed=0))
    assert all(len(b) == 3 for b in full) and len(full) == 8
    indices = [[i for _, i in batch] for batch in full]
    assert sorted(sum(indices[:3], [])) == sorted(set(sum(indices[:3], []))), "no repeats inside an epoch"
    assert indices[:3] != indices[3:6], "every epoch has its own order"
    assert [{e for e, _ in batch} for batch in full] == [{0}] * 3 + [{1}] * 3 + [{2}] * 2, "each index carries its epoch"
    assert list(ResumableBatchSampler(10, 3, num_batches=8, seed=0, start_batch=5)) == full[5:]
    with pytest.raises(ValueError, match="fewer than one batch"):
        ResumableBatchSampler(2, 3, num_batches=1, seed=0)


def test_loss_history_round_trip_and_plot(tmp_path):
    history = LossHistory()
    for step in range(1, 6):
        history.append(step, loss=1 / step, lr=1e-3)
    history.save(tmp_path / "h.json")
    assert LossHistory.load(tmp_path / "h.json").records == history.records
    history.plot(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def make_run(tmp_path, total_limit=2):
    set_seed(0)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer, CheckpointManager(accelerator, tmp_path, total_limit)


def train_step(model, optimizer):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def test_checkpoints_restore_weights_rngs_and_history_and_keep_a_limit(tmp_path):
    accelerator, model, optimizer, checkpoints = make_run(tmp_path)
    history = LossHistory()
    for step in range(1, 5):
        history.append(step, loss=train_step(model, optimizer))
        checkpoints.save(step, history, {f"ema.{i}": p.detach() * 2 for i, p in enumerate(model.parameters())})
    assert [p.name for p in checkpoints.checkpoints()] == ["checkpoint-3", "checkpoint-4"]
    expected_next = train_step(model, optimizer)
    weights = [p.detach().clone() for p in model.parameters()]

    accelerator, model, optimizer, checkpoints = make_run(tmp_path)
    ema = [torch.zeros_like(p) for p in model.parameters()]
    step, restored = checkpoints.load(checkpoints.resolve("latest"), {f"ema.{i}": e for i, e in enumerate(ema)})
    assert step == 4 and restored.records == history.records
    assert train_step(model, optimizer) == expected_next, "same weights, optimizer state and RNG"
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), weights))
    assert all(e.abs().sum() > 0 for e in ema)
    assert not list(tmp_path.rglob("*.pkl")) or all(
        p.name.startswith("random_states") for p in tmp_path.rglob("*.pkl")
    ), "only accelerate's RNG states are pickles, read back with weights_only=True"


def test_an_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    accelerator, model, optimizer, checkpoints = make_run(tmp_path)
    checkpoints.save(1, LossHistory())
    original = accelerator.save_state

    def crash_midway(path, **kwargs):
        original(path, **kwargs)
        raise KeyboardInterrupt  # the process dies after writing part of the checkpoint

    monkeypatch.setattr(accelerator, "save_state", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save(2, LossHistory())
    assert [p.name for p in checkpoints.checkpoints()] == ["checkpoint-1"]
    assert checkpoints.resolve("latest").name == "checkpoint-1"
    monkeypatch.undo()
    checkpoints.save(2, LossHistory())  # the leftover partial folder is cleaned up
    assert [p.name for p in checkpoints.checkpoints()] == ["checkpoint-1", "checkpoint-2"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_resolve_rejects_a_folder_that_is_not_a_checkpoint(tmp_path):
    _, _, _, checkpoints = make_run(tmp_path)
    assert checkpoints.resolve("latest") is None
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        checkpoints.resolve(str(tmp_path / "nope"))


def test_each_sample_draws_its_own_numbers_whichever_process_holds_it():
    from videoar_hf.sampling import uniform_noise
    from videoar_hf.training import sample_generators

    def draws(generators):
        return uniform_noise((len(generators), 5), generators, "cpu")

    whole = draws(sample_generators(0, step=3, micro_batch=0, first_position=0, count=4))
    rank_0, rank_1 = draws(sample_generators(0, 3, 0, 0, 2)), draws(sample_generators(0, 3, 0, 2, 2))
    assert torch.equal(whole, torch.cat([rank_0, rank_1])), "one process with the global batch draws the same"
    assert not torch.equal(rank_0, rank_1), "the processes draw differently"
    assert not torch.equal(draws(sample_generators(0, 4, 0, 0, 2)), rank_0), "every step draws anew"
    assert not torch.equal(draws(sample_generators(0, 3, 1, 0, 2)), rank_0), "and every micro-batch"
