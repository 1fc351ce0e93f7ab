import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerControl, TrainerState

import llm_fusion_fec.commands.train as train_command
import llm_fusion_fec.training.run as train_fusion
import llm_fusion_fec.training.trainer as trainer_module
from configuration_llm_fusion import LLMFusionConfig
from helpers import run_program
from llm_fusion_fec.data.splits import build_config, training_splits
from llm_fusion_fec.features.metadata import load_features
from llm_fusion_fec.features.run import extract
from llm_fusion_fec.training.trainer import (
    FusionTrainer,
    NonFiniteError,
    ProtocolCallback,
    SeedOrderBatches,
    SeedProgress,
    SeedStack,
    StoppingRule,
    build_model,
    epoch_order,
)

LIMIT = 40


def original_loop(losses: list[float], f1s: list[float], patience: int = 10) -> tuple[int, int]:
    """The original's loop (LLM-FusionClassifier main.py), transcribed: (epochs run, epoch whose test it reports)."""
    best_loss, best_f1, count, reported, epochs = 1e5, -1, 0, None, 0
    for epoch, (loss, f1) in enumerate(zip(losses, f1s, strict=True)):
        if count >= patience:
            break
        epochs = epoch + 1
        count += 1
        if loss < best_loss:
            count, best_loss, reported = 0, loss, epoch
        if f1 > best_f1:
            count, best_f1, reported = 0, f1, epoch
    return epochs, reported


def run_rule(losses, f1s, mode: str, patience: int = 10) -> tuple[int, int]:
    rule = StoppingRule(["loss", "weighted_f1"], patience, "weighted_f1", mode)
    kept, epochs = None, 0
    for epoch, (loss, f1) in enumerate(zip(losses, f1s, strict=True)):
        epochs = epoch + 1
        _, keep = rule.update({"loss": loss, "weighted_f1": f1})
        kept = epoch if keep else kept
        if rule.stopped:
            break
    return epochs, kept


def test_stopping_rule_stops_where_the_original_stops():
    # F1 flat at the label prior while the loss falls slowly: the original trains on, and so does the rule.
    losses = [3.4627, 3.4611, 3.4597, 3.4585, 3.4576, 3.4568] + [3.4568 - 0.0002 * i for i in range(1, 30)]
    flat = [0.0054] * len(losses)
    assert run_rule(losses, flat, "last_improvement") == original_loop(losses, flat) == (len(losses), len(losses) - 1)
    # weighted-F1 alone (the previous rule) would have stopped after 11 evaluations.
    f1_only = StoppingRule(["weighted_f1"], 10, "weighted_f1")
    assert next(i + 1 for i, f1 in enumerate(flat) if (f1_only.update({"weighted_f1": f1}), f1_only.stopped)[1]) == 11
    rng = np.random.default_rng(0)
    for _ in range(300):
        length = int(rng.integers(5, 80))
        losses = list(3 - np.cumsum(rng.normal(0.002, 0.02, length)))
        f1s = list(np.maximum.accumulate(rng.random(length)) * rng.choice([1.0, 0.97], length))
        patience = int(rng.integers(1, 12))
        epochs, reported = original_loop(losses, f1s, patience)
        assert run_rule(losses, f1s, "last_improvement", patience) == (epochs, reported)
        # "best" stops at the same epoch and keeps the first epoch with the best F1 seen until then.
        ran = f1s[:epochs]
        assert run_rule(losses, f1s, "best", patience) == (epochs, int(np.argmax(ran)))


def test_seed_order_is_the_same_alone_and_together():
    together = list(SeedOrderBatches(23, 10, [5, 6, 7]))
    alone = {seed: list(SeedOrderBatches(23, 10, [seed])) for seed in (5, 6, 7)}
    assert [len(batch) for batch in together] == [30, 30, 9]
    for step, batch in enumerate(together):
        assert torch.equal(batch, torch.cat([alone[seed][step] for seed in (5, 6, 7)]))
    assert sorted(torch.cat(alone[5]).tolist()) == list(range(23))
    assert not torch.equal(epoch_order(5, 0, 23), epoch_order(5, 1, 23))  # a new order every epoch


def test_group_by_length_batches_rows_of_like_length_in_each_seeds_own_order():
    lengths = torch.randint(1, 60, (230,))
    grouped = SeedOrderBatches(230, 20, [5, 6], lengths)
    batches = list(grouped)
    assert [len(batch) for batch in batches] == [40] * 11 + [20]
    for seed_index, seed in enumerate((5, 6)):
        own = [batch.view(2, -1)[seed_index] for batch in batches]
        assert sorted(torch.cat(own).tolist()) == list(range(230))  # every row once an epoch
        assert all(torch.equal(a, b) for a, b in zip(own, SeedOrderBatches(230, 20, [seed], lengths), strict=True))
        padded = sum(int(lengths[batch].max()) * len(batch) for batch in own)
        shuffled = sum(int(lengths[batch].max()) * len(batch) for batch in SeedOrderBatches(230, 20, [seed]))
        assert padded < 0.8 * shuffled  # less padding than the random order's
    assert not torch.equal(torch.cat(batches), torch.cat(list(SeedOrderBatches(230, 20, [6, 5], lengths))))
    grouped.set_epoch(1)
    assert not torch.equal(torch.cat(list(grouped)), torch.cat(batches))  # a new order every epoch


def test_an_unknown_sampling_strategy_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^--train_sampling_strategy 'sequential': the fusion head's trainer reads"):
        train_fusion.FusionTrainingArguments(output_dir=str(tmp_path), train_sampling_strategy="sequential")


def _metrics(scripted: dict[int, list[float]], epoch: int) -> dict[str, float]:
    """An evaluation's metrics as `per_seed_metrics` names them: each seed's scripted loss (and -loss as F1)."""
    metrics = {}
    for seed, losses in scripted.items():
        if epoch > len(losses):  # a seed that stopped is not scored any more
            continue
        metrics |= {f"eval_seed{seed}_loss": losses[epoch - 1], f"eval_seed{seed}_weighted_f1": -losses[epoch - 1]}
    return metrics


def test_each_seed_stops_on_its_own():
    rule = lambda: StoppingRule(["loss"], 2, "loss")  # noqa: E731
    progress = {1: SeedProgress(rule()), 2: SeedProgress(rule())}
    scripted = {1: [3.0, 2.0, 2.5, 2.6, 1.0, 0.5], 2: [3.0, 2.9, 2.8, 2.7, 2.6, 2.7]}
    kept, state, control = [], TrainerState(), TrainerControl()
    callback = ProtocolCallback(progress, kept.append)
    for epoch in range(1, 7):
        state.epoch = epoch
        kept.clear()
        callback.on_evaluate(None, state, control, metrics=_metrics(scripted, epoch))
        if epoch == 4:  # seed 1 stopped after two evaluations without improvement; seed 2 goes on
            assert progress[1].rule.stopped and not progress[2].rule.stopped and not control.should_training_stop
        if epoch == 5:  # seed 1 would have improved now, but it has stopped: nothing of it changes
            assert kept == [2]
    assert progress[1].kept_epoch == 2 and [record.epoch for record in progress[1].history] == [1, 2, 3, 4]
    assert progress[2].kept_epoch == 5 and len(progress[2].history) == 6
    assert not control.should_training_stop
    state.epoch = 7
    scripted[2].append(2.8)
    callback.on_evaluate(None, state, control, metrics=_metrics(scripted, 7))
    assert control.should_training_stop  # both have stopped


def test_non_finite_losses_stop_the_run():
    callback = ProtocolCallback({1: SeedProgress(StoppingRule(["loss"], 2, "loss"))}, lambda seed: None)
    state = TrainerState(epoch=1, global_step=4)
    with pytest.raises(NonFiniteError, match="validation loss became nan at epoch 1"):
        callback.on_evaluate(None, state, TrainerControl(), metrics=_metrics({1: [math.nan]}, 1))
    with pytest.raises(NonFiniteError, match="training loss became inf by step 4"):
        callback.on_log(None, state, TrainerControl(), logs={"loss": math.inf})


def test_seed_stack_computes_what_each_seed_computes_alone(tiny_backbones):
    config = LLMFusionConfig(backbones=tiny_backbones, num_labels=5, fusion_dim=16, mlp_dims=[8])
    models = [build_model(config, seed, None).eval() for seed in (3, 4)]
    stack = SeedStack(models).eval()
    features = {"llama": torch.randn(2, 6, 3, 32), "bert": torch.randn(2, 6, 32), "roberta": torch.randn(2, 6, 24)}
    labels = torch.randint(0, 5, (2, 6))
    out = stack(labels=labels, **features)
    alone = [m(labels=labels[i], **{k: v[i] for k, v in features.items()}) for i, m in enumerate(models)]
    torch.testing.assert_close(out.logits, torch.stack([o.logits for o in alone]))
    torch.testing.assert_close(out.loss, sum(o.loss for o in alone))
    shared = stack(labels=labels[0], **{k: v[0] for k, v in features.items()})  # evaluation: the same rows
    assert shared.logits.shape == (6, 2, 5)
    torch.testing.assert_close(shared.logits[:, 1], models[1](**{k: v[0] for k, v in features.items()}).logits)
    for index, model in enumerate(models):
        state = stack.seed_state_dict(index)
        assert state.keys() == model.state_dict().keys()
        assert all(torch.equal(state[name], value) for name, value in model.state_dict().items())


@pytest.fixture(scope="module")
def features(tmp_path_factory, tiny_backbones, data_dir):
    out = tmp_path_factory.mktemp("features") / "ED"
    extract("ED", data_dir=str(data_dir), backbones=tiny_backbones, output_dir=out, limit=LIMIT)
    return out


def test_batched_seeds_train_as_each_seed_alone_without_dropout(features, tmp_path):
    data, metadata = load_features(features)
    config = build_config(metadata, dropout=0.0)
    rule = StoppingRule(["loss", "weighted_f1"], 10, "weighted_f1", "last_improvement")
    setup = train_fusion.Setup(metadata, config, training_splits(data, config), None, rule)
    args = train_fusion.FusionTrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=3, report_to="none", disable_tqdm=True
    )
    together = [
        trained.result for trained in train_fusion.train_seeds(setup, args, [42, 43, 44], tmp_path / "together")
    ]
    for seed, batched in zip((42, 43, 44), together, strict=True):
        ((alone, _),) = train_fusion.train_seeds(setup, args, [seed], tmp_path / f"alone-{seed}")
        assert batched.trained_with == [42, 43, 44] and alone.trained_with == [seed]
        assert batched.best_epoch == alone.best_epoch and batched.epochs == alone.epochs == 3
        for one, other in zip(batched.history, alone.history, strict=True):
            assert one.improved == other.improved
            assert one.validation == pytest.approx(other.validation, abs=1e-5)
        weights = [
            load_file(tmp_path / run / f"seed-{seed}" / "model" / "model.safetensors")
            for run in ("together", f"alone-{seed}")
        ]
        for name, value in weights[0].items():
            torch.testing.assert_close(value, weights[1][name], atol=1e-5, rtol=1e-4, msg=name)
    assert not (tmp_path / "together" / "seeds-42-43-44").exists()  # its checkpoints served to resume only


def test_batched_and_sequential_runs_write_the_same_shapes(features, tmp_path):
    outputs = {}
    for batch in ("true", "false"):
        output = tmp_path / batch
        cli = [
            "--features-dir",
            str(features),
            "--output-dir",
            str(output),
            "--num_train_epochs",
            "2",
            "--disable_tqdm",
            "true",
            "--seeds",
            "2",
            "--batch_seeds",
            batch,
        ]
        outputs[batch] = (train_command.main(cli).to_dict(), output)
    (batched, batched_dir), (sequential, sequential_dir) = outputs["true"], outputs["false"]

    def shape(value):
        if isinstance(value, dict):
            return {key: shape(item) for key, item in value.items()}
        if isinstance(value, list):  # names (e.g. the metrics an epoch improved) may differ in number
            return ["str"] if all(isinstance(item, str) for item in value) else [shape(item) for item in value]
        return type(value).__name__

    for run in (*batched["runs"], *sequential["runs"]):
        run.pop("trained_with")
    assert shape(batched) == shape(sequential)

    def files(folder):
        return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())

    assert files(batched_dir) == files(sequential_dir)
    assert [record["epoch"] for record in batched["runs"][0]["history"]] == [1, 2]


def test_the_gradient_norm_shortcut_still_fits_trainer(features, tmp_path):
    """FusionTrainer overrides Trainer's private `_get_grad_norm`: fail loudly if transformers changes it."""
    import inspect

    from transformers import Trainer

    assert list(inspect.signature(Trainer._get_grad_norm).parameters) == ["self", "model", "grad_norm"]
    data, metadata = load_features(features)
    config = build_config(metadata)
    logged = {}
    for clip in (0.0, 1.0):
        args = train_fusion.FusionTrainingArguments(
            output_dir=str(tmp_path / str(clip)),
            max_steps=2,
            logging_steps=1,
            logging_strategy="steps",
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            max_grad_norm=clip,
        )
        trainer = FusionTrainer(
            model=build_model(config, 0, None), args=args, train_dataset=training_splits(data, config)["train"]
        )
        trainer.train()
        logged[clip] = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logged[0.0]) == 2 and not any("grad_norm" in log for log in logged[0.0])  # skipped: nothing clipped
    assert all(log["grad_norm"] > 0 for log in logged[1.0])  # clipping still computes it


def test_flushing_denormals_reaches_every_thread_when_done_first():
    """train_fusion.main flushes denormals before any parallel work: then no intra-op thread computes on them (the
    paper's head slows down on them); flushed after the threads exist, only the main thread's share is flushed."""
    assert run_program("flush_denormals.py", repo=True) == {"denormal_products": 0}
    if torch.get_num_threads() >= 2:  # with two cores the second thread keeps its denormals
        assert run_program("flush_denormals.py", "late", repo=True)["denormal_products"] > 0


def test_train_fusion_flushes_denormals_before_anything_else(monkeypatch):
    calls = []
    monkeypatch.setattr(trainer_module, "flush_denormals", lambda: calls.append("flush"))

    def parse_args(argv, prog):
        calls.append("parse")
        raise SystemExit

    monkeypatch.setattr(train_command, "parse_args", parse_args)
    with pytest.raises(SystemExit):
        train_command.main([])
    assert calls == ["flush", "parse"]
