"""The trainer's parts, each alone: the run config's tables, checkpoint rotation, stop signals,
single-process collectives and the metrics log."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from gptoss import GPT, GPTConfig
from gptoss.checkpoints.load import load_model
from gptoss.data.tokenizers import build_tokenizer
from gptoss.train import TrainConfig
from gptoss.train.checkpointing import RunCheckpoints, checkpoint_dirs, read_trainer_state
from gptoss.train.config import nest
from gptoss.train.distributed import Distributed
from gptoss.train.metrics import MetricsLog
from gptoss.train.signals import StopSignals


# ---------------------------------------------------------------------------------------- config
def test_flat_keys_and_tables_give_the_same_config():
    flat = TrainConfig.from_dict({"learning_rate": 3e-4, "seq_len": 32, "corpus": "pystdlib", "max_steps": 200})
    tables = TrainConfig.from_dict({"max_steps": 200, "optim": {"learning_rate": 3e-4}, "batch": {"seq_len": 32},
                                    "data": {"corpus": "pystdlib"}})  # fmt: skip
    assert flat == tables
    assert flat.optim.learning_rate == flat.learning_rate == 3e-4  # the flat name still reads
    assert flat.replace(learning_rate=1e-3) == flat.replace(optim={"learning_rate": 1e-3})


def test_an_old_flat_run_config_json_reads_as_the_tables_it_now_has():
    """A checkpoint written before the tables stored every key at the top level."""
    config = TrainConfig.from_dict({"max_steps": 50, "optim": {"warmup_steps": 5, "learning_rate": 2e-3}})
    old_form = {k: v for table in config.to_dict().values() if isinstance(table, dict) and "preset" not in table
                for k, v in table.items()}  # fmt: skip
    old_form |= {"run_dir": config.run_dir, "seed": config.seed, "max_steps": 50, "model": config.model}
    assert TrainConfig.from_dict(json.loads(json.dumps(old_form))) == config


def test_a_key_given_flat_and_in_its_table_is_an_error():
    with pytest.raises(ValueError, match="'learning_rate' is given twice, at the top level and in \\[optim\\]"):
        nest({"learning_rate": 1e-3, "optim": {"learning_rate": 2e-3}})


def test_a_key_in_the_wrong_table_names_the_right_one():
    with pytest.raises(ValueError, match="unknown \\[optim\\] key 'seq_len' .it belongs in \\[batch\\]"):
        TrainConfig.from_dict({"optim": {"seq_len": 32}})
    with pytest.raises(ValueError, match="unknown \\[optim\\] key 'learnin_rate'.*did you mean 'learning_rate'"):
        TrainConfig.from_dict({"optim": {"learnin_rate": 1e-3}})
    with pytest.raises(TypeError, match="must be a table"):
        TrainConfig.from_dict({"optim": 3})


def test_each_table_checks_its_own_values():
    with pytest.raises(ValueError, match="keep_last must be >= 1"):
        TrainConfig.from_dict({"checkpoint": {"keep_last": 0}})
    with pytest.raises(TypeError, match="'seq_len' must be of type int"):
        TrainConfig.from_dict({"batch": {"seq_len": "64"}})


# ---------------------------------------------------------------------------------------- checkpoints
def tiny_model() -> tuple[GPT, object]:
    tokenizer = build_tokenizer("char", "abc")
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, d_model=16, num_layers=1, num_heads=2, d_ff=32)), tokenizer


def test_rotation_keeps_the_last_checkpoints_and_best_apart(tmp_path):
    model, tokenizer = tiny_model()
    checkpoints = RunCheckpoints(tmp_path, keep_last=2, distributed=Distributed())
    assert checkpoints.latest() is None
    for step in (1, 2, 3):
        checkpoints.save(step, model, tokenizer, {"step": step}, lambda s=step: trainer_state(s), {"max_steps": 3})
    checkpoints.save_best(model, tokenizer, {"step": 2})
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["step-0000002", "step-0000003"]
    assert checkpoints.latest().name == "step-0000003"
    assert read_trainer_state(checkpoints.latest())["step"] == 3
    loaded, loaded_tokenizer = load_model(tmp_path / "best")
    assert loaded_tokenizer.encode("cab") == tokenizer.encode("cab")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_a_rewind_sets_the_later_history_aside_without_deleting_it(tmp_path):
    model, tokenizer = tiny_model()
    checkpoints = RunCheckpoints(tmp_path, keep_last=5, distributed=Distributed())
    for step in (1, 2, 3):
        checkpoints.save(step, model, tokenizer, {"step": step}, lambda s=step: trainer_state(s), {})
    checkpoints.save_best(model, tokenizer, {"step": 3})
    aside, names = checkpoints.set_aside_later(1)
    assert names == ["step-0000002", "step-0000003", "best"]
    assert sorted(p.name for p in aside.iterdir()) == sorted(names)
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["step-0000001"]
    assert checkpoints.set_aside_later(1) is None  # nothing later any more


def trainer_state(step: int) -> dict:
    return {"step": step, "tokens_seen": 0, "optimizer": {}, "data_generator": torch.get_rng_state(), "rng": {}}


# ---------------------------------------------------------------------------------------- signals, collectives, metrics
def test_stop_signals_are_recorded_then_a_second_one_interrupts():
    previous = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is previous  # the handlers are put back


def test_one_process_collectives_are_identities():
    single = Distributed()
    t = torch.tensor([1.0, 3.0])
    assert single.is_main and single.world_size == 1
    assert single.mean(t) is t and torch.equal(t, torch.tensor([1.0, 3.0]))
    assert single.sum(t) is t
    assert single.any(True, t.device) and not single.any(False, t.device)
    assert single.gather({"a": 1}) == [{"a": 1}]
    single.barrier()
    single.close()


def test_a_resumed_metrics_log_drops_the_rows_after_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path, resumed_step=None, tensorboard=False)
    for step in range(1, 6):
        log.write({"step": step, "train_loss": 1.0 / step})
    log.close()
    resumed = MetricsLog(tmp_path, resumed_step=3, tensorboard=False)
    resumed.write({"step": 4, "train_loss": 0.5})
    assert [(r["step"], r["train_loss"]) for r in resumed.rows()] == [("1", "1.0"), ("2", "0.5"), ("3", repr(1 / 3)), ("4", "0.5")]
    resumed.close()
