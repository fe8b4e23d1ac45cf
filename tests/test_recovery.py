"""LoRA recovery on tiny pruned models: loss goes down, merge is exact, checkpoints resume, bad data fails clearly.

Every model here is a tiny random config built in-process; runs take a few dozen updates of 16-token examples.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from minillm_core import data as textdata
from minillm_core.errors import DataError, MiniLLMError
from minillm_core.evaluation.suite import EvalConfig
from minillm_core.io import load_plan, load_pruned, save_pruned
from minillm_core.planning import PlanConfig
from minillm_core.recovery import (
    CHECKPOINT_DIR,
    IGNORE,
    RECOVERY_FILE,
    RESPONSE_MARKER,
    RecoveryConfig,
    default_target_modules,
    encode_examples,
    load_adapter,
    load_training_data,
    loss_curve,
    lr_at,
    merge_adapters,
    perplexity_curve,
    recover,
    steps_per_epoch,
)
from minillm_core.recovery.local import pack_rows
from minillm_core.recovery.train import TEACHER_DIR, _epoch_groups, steps_for_tokens
from minillm_core.workflow import make_plan as plan
from minillm_core.workflow import prune as apply_plan
from minillm_core.workflow import score
from tests.helpers import tiny_model, tiny_tokenizer

WORDS = " ".join(f"w{i}" for i in range(3, 11))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls gain nothing from threads and lose much to contention on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(model, tok, cfg, **kwargs):
    """`recover` without the evaluation suite (offline and fast) unless a test asks for it."""
    return recover(model, tok, cfg, **{"evaluation": None, **kwargs})


def pruned(kind: str = "llama-gqa"):
    model = tiny_model(kind)
    p = plan(model, score(model, "magnitude"), PlanConfig(ratio=0.3, allocation="global", protected_layers=()))
    return apply_plan(model, p), p


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "train.txt"
    path.write_text((WORDS + " ") * 40, encoding="utf-8")
    return path


def config(data: Path, **overrides) -> RecoveryConfig:
    base = {"data": str(data), "max_length": 16, "batch_size": 4, "n_samples": 16, "learning_rate": 1e-2,
            "warmup_steps": 0, "dropout": 0.0, "rank": 4, "alpha": 8.0, "epochs": 2}
    return RecoveryConfig(**{**base, **overrides})


def text_loss(model, tok) -> float:
    ids = torch.tensor([tok((WORDS + " ") * 2).input_ids[:16]])
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.arange(3, 19)[None]).logits


def params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# --- training ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["llama-gqa", "opt", "bloom"])
def test_training_lowers_the_loss_and_leaves_the_callers_model_alone(kind, text_file):
    model, _ = pruned(kind)
    tok = tiny_tokenizer()
    before, weights = text_loss(model, tok), params(model)
    seen = []
    result = train(model, tok, config(text_file, epochs=8), progress=lambda d, t, label: seen.append((d, t, label)))
    assert result.steps == result.total_steps == 8 * steps_per_epoch(16, config(text_file))
    # The frozen random lm_head caps how confident a tiny model can get (~3.6 nats), so expect a drop, not ~0.
    assert text_loss(result.model, tok) < before - 0.25
    assert type(result.model) is type(model)  # merged back into the plain architecture
    assert seen[-1] == (result.steps, result.total_steps, "recover")
    assert all(torch.equal(weights[n], p) for n, p in model.named_parameters())


def test_default_targets_come_from_the_adapter():
    assert default_target_modules(tiny_model("llama-gqa")) == (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert default_target_modules(tiny_model("opt")) == ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    assert default_target_modules(tiny_model("bloom")) == (
        "query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")


def test_learning_rate_warms_up_then_decays_linearly():
    assert [round(lr_at(s, 10, 4, 1.0), 3) for s in range(10)] == [
        0.2, 0.4, 0.6, 0.8, 1.0, 0.833, 0.667, 0.5, 0.333, 0.167]


def test_learning_rate_follows_whichever_budget_is_closer_to_its_end():
    assert lr_at(5, 10, 0, 1.0, time_left=0.2) == pytest.approx(0.2)  # the time budget is nearly spent
    assert lr_at(5, 10, 0, 1.0, time_left=0.9) == pytest.approx(0.5)  # the updates are
    assert lr_at(1, 10, 4, 1.0, time_left=0.1) == pytest.approx(0.4)  # warmup is by updates
    assert lr_at(5, 10, 0, 1.0, time_left=-0.1) == 0.0


@pytest.mark.parametrize("budget", [1, 63, 64, 65, 200, 371, 372, 1000])
def test_token_budget_is_the_first_update_that_reaches_it(budget):
    examples = [([1] * n, [1] * n) for n in (3, 17, 5, 9, 30, 2, 11)]  # 77 tokens a pass, uneven batches
    cfg = RecoveryConfig(batch_size=2, grad_accum=1, seed=3)
    seen, steps, epoch = 0, 0, 0
    while seen < budget:  # the run's own order, update by update
        for group in _epoch_groups(len(examples), cfg, epoch):
            if seen >= budget:
                break
            seen, steps = seen + sum(len(examples[i][0]) for batch in group for i in batch), steps + 1
        epoch += 1
    assert steps_for_tokens(examples, cfg, budget) == steps


def test_a_token_budget_sets_the_updates_and_the_decay(text_file):
    model, _ = pruned()
    cfg = config(text_file, epochs=1, max_tokens=600)  # 16 blocks of 16 tokens = 256 a pass, 64 an update
    result = train(model, tiny_tokenizer(), cfg)
    assert result.steps == result.total_steps == 10  # ceil(600 / 64): two passes and two updates of the third
    assert result.record["tokens"] == 640 and not result.record["time_budget_spent"]
    assert result.losses[-1]["lr"] == pytest.approx(lr_at(9, 10, 0, cfg.learning_rate))
    with pytest.raises(MiniLLMError, match="max_tokens and max_steps both set the number of updates"):
        config(text_file, max_tokens=600, max_steps=3)
    assert config(text_file, max_tokens=0, max_minutes=0).max_tokens is None


def test_a_time_budget_ends_training_and_still_saves_the_model(text_file, tmp_path):
    import time

    model, _ = pruned()
    cfg = config(text_file, epochs=None, max_minutes=0.3 / 60)  # 0.3 s; each update takes at least 0.05 s below
    seen = []
    result = train(model, tiny_tokenizer(), cfg, out_dir=tmp_path / "run", on_step=lambda r: time.sleep(0.05),
                   progress=lambda done, total, label: seen.append((done, total)))

    assert result.total_steps == 100 * steps_per_epoch(16, cfg)  # alone, the records repeat until the time is spent
    assert not result.stopped and 1 <= result.steps < result.total_steps
    assert result.record["time_budget_spent"] and result.train_seconds >= 0.3
    assert seen[-1][1] <= result.steps + 3 < result.total_steps  # progress: the updates the time allows at this pace
    lrs = [row["lr"] for row in result.losses]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.9 * cfg.learning_rate  # decayed with the clock
    assert load_pruned(tmp_path / "run")[0] is not None  # evaluated and saved as a finished run
    with pytest.raises(MiniLLMError, match=r"max_minutes must be a number > 0"):
        config(text_file, max_minutes=-1)
    assert (RecoveryConfig().passes, RecoveryConfig(epochs=3, max_minutes=1).passes) == (1, 3)
    assert RecoveryConfig(max_minutes=1, max_tokens=10).passes == 1  # the tokens decide the updates
    with pytest.raises(MiniLLMError, match=r"epochs must be at most 100, got 101"):
        RecoveryConfig(epochs=101)


def test_a_time_budget_spent_at_a_measured_update_ends_the_curve_once(text_file, data_dir):
    import time

    model, _ = pruned()
    evaluation = EvalConfig(perplexity=("wikitext2",), limit=1, seq_len=16)
    cfg = config(text_file, epochs=4, eval_every=2, max_minutes=0.45 / 60)  # 0.3 s an update: spent after the 2nd
    result = train(model, tiny_tokenizer(), cfg, evaluation=evaluation, on_step=lambda r: time.sleep(0.3))
    assert result.steps == 2 and result.record["time_budget_spent"]
    assert [c["step"] for c in result.record["curve"]] == [0, 2]  # the end point once, from the after-evaluation


def test_a_run_killed_before_its_first_checkpoint_resumes_from_its_live_logs(text_file, tmp_path, data_dir):
    from minillm_core.recovery.train import LIVE_CURVE, LIVE_LOG

    out = tmp_path / "run"
    out.mkdir()
    (out / LIVE_LOG).write_text('{"step": 1, "epoch": 0, "loss": 3.0, "lr": 0.01}\n{"step": 2, "ep')  # cut mid-line
    (out / LIVE_CURVE).write_text("")
    assert loss_curve(out) == [{"step": 1, "epoch": 0, "loss": 3.0, "lr": 0.01}]  # the half line is left out
    result = train(pruned()[0], tiny_tokenizer(), config(text_file, epochs=1, eval_every=2), out_dir=out,
                   curve=EvalConfig(perplexity=("wikitext2",), limit=1, seq_len=16))
    assert not result.stopped and result.steps == result.total_steps


# --- merge and save ---------------------------------------------------------------------------------------------


def test_merged_model_equals_the_adapter_model_and_reloads(text_file, tmp_path):
    model, _ = pruned()
    tok = tiny_tokenizer()
    result = train(model, tok, config(text_file, merge=False))
    adapted = logits(result.model)
    assert not torch.allclose(adapted, logits(model), atol=1e-3)  # training changed something
    merged = merge_adapters(result.model)
    torch.testing.assert_close(logits(merged), adapted, atol=1e-5, rtol=1e-5)
    save_pruned(merged, tok, tmp_path / "merged")
    reloaded, _ = load_pruned(tmp_path / "merged")
    torch.testing.assert_close(logits(reloaded), adapted, atol=1e-5, rtol=1e-5)


def test_out_dir_becomes_a_pruned_model_with_its_plan_and_record(text_file, tmp_path):
    model, p = pruned()
    out = tmp_path / "recovered"
    result = train(model, tiny_tokenizer(), config(text_file), out_dir=out, plan=p)
    reloaded, _ = load_pruned(out)
    torch.testing.assert_close(logits(reloaded), logits(result.model), atol=1e-5, rtol=1e-5)
    assert load_plan(out).to_dict() == p.to_dict()
    assert not (out / CHECKPOINT_DIR).exists()
    record = json.loads((out / RECOVERY_FILE).read_text())
    assert record["steps"] == result.steps and len(record["losses"]) == result.steps
    assert record["settings"]["rank"] == 4 and record["output"] == "merged"
    assert loss_curve(out) == record["losses"]


def test_adapter_kept_apart_loads_on_the_pruned_base(text_file, tmp_path):
    model, p = pruned()
    tok = tiny_tokenizer()
    save_pruned(model, tok, tmp_path / "base", plan=p)
    result = train(model, tok, config(text_file, merge=False), out_dir=tmp_path / "adapter")
    base, _ = load_pruned(tmp_path / "base")
    torch.testing.assert_close(logits(load_adapter(base, tmp_path / "adapter")), logits(result.model),
                               atol=1e-5, rtol=1e-5)


# --- checkpoints ------------------------------------------------------------------------------------------------


def _stop_after(n: int):
    done = [0]
    return (lambda d, t, label: done.__setitem__(0, d)), (lambda: done[0] >= n)


def test_resume_after_an_epoch_continues_the_step_count(text_file, tmp_path):
    model, _ = pruned()
    tok = tiny_tokenizer()
    cfg = config(text_file, dropout=0.1)  # dropout: the checkpoint must restore the RNG too
    per_epoch = steps_per_epoch(16, cfg)
    straight = train(model, tok, cfg, out_dir=tmp_path / "straight")
    progress, stop = _stop_after(per_epoch)
    first = train(model, tok, cfg, out_dir=tmp_path / "run", progress=progress, should_stop=stop)
    assert first.stopped and first.steps == per_epoch and first.epochs_done == 1
    state = json.loads((tmp_path / "run" / CHECKPOINT_DIR / "state.json").read_text())
    assert (state["step"], state["epoch"], state["micro_in_epoch"]) == (per_epoch, 1, 0)
    second = train(model, tok, cfg, out_dir=tmp_path / "run")
    assert not second.stopped and second.steps == 2 * per_epoch
    assert [row["step"] for row in second.losses] == list(range(1, 2 * per_epoch + 1))
    assert second.before == first.before
    torch.testing.assert_close(logits(second.model), logits(straight.model), atol=1e-6, rtol=1e-6)


def test_cancel_mid_epoch_leaves_a_consistent_checkpoint(text_file, tmp_path):
    from safetensors.torch import load_file

    model, _ = pruned()
    tok = tiny_tokenizer()
    cfg = config(text_file, epochs=1)
    out = tmp_path / "run"
    progress, stop = _stop_after(3)
    result = train(model, tok, cfg, out_dir=out, progress=progress, should_stop=stop)
    assert result.stopped and result.steps == 3 < result.total_steps
    state = json.loads((out / CHECKPOINT_DIR / "state.json").read_text())
    assert (state["step"], state["micro_in_epoch"], len(state["losses"])) == (3, 3, 3)
    saved = load_file(str(out / CHECKPOINT_DIR / "adapter.safetensors"))
    trainable = {n: p for n, p in result.model.named_parameters() if p.requires_grad}
    assert saved.keys() == trainable.keys() and all(torch.equal(saved[n], trainable[n]) for n in saved)
    assert not (out / "config.json").exists() and len(loss_curve(out)) == 3
    with pytest.raises(MiniLLMError, match="pass resume"):
        train(model, tok, cfg, out_dir=out, resume=False)
    with pytest.raises(MiniLLMError, match=r"rank: 4 -> 8"):
        train(model, tok, config(text_file, epochs=1, rank=8), out_dir=out)
    adapter = out / CHECKPOINT_DIR / "adapter.safetensors"
    whole = adapter.read_bytes()
    adapter.write_bytes(whole[: len(whole) // 2])  # a checkpoint cut short (disk full, killed copy)
    with pytest.raises(MiniLLMError, match=r"adapter\.safetensors is unreadable .*delete"):
        train(model, tok, cfg, out_dir=out)
    adapter.write_bytes(whole)
    finished = train(model, tok, cfg, out_dir=out)
    straight = train(model, tok, cfg)
    assert finished.steps == straight.steps == steps_per_epoch(16, cfg)
    torch.testing.assert_close(logits(finished.model), logits(straight.model), atol=1e-6, rtol=1e-6)


def test_refuses_a_non_empty_directory(text_file, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("precious")
    with pytest.raises(MiniLLMError, match="exists and is not empty"):
        train(pruned()[0], tiny_tokenizer(), config(text_file), out_dir=tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "precious"


# --- data -------------------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def test_alpaca_records_mask_the_prompt_like_llm_pruner(tmp_path):
    tok = tiny_tokenizer()
    path = _write_jsonl(tmp_path / "a.jsonl", [{"instruction": "w5 w6", "input": "", "output": "w7 w8 w9"}])
    (ids, labels), = encode_examples(load_training_data(str(path)), tok, config(path, max_length=256))
    n_prompt = len(tok(textdata.render_alpaca({"instruction": "w5 w6"})).input_ids)
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[n_prompt:-1]) == "w7 w8 w9"
    (_, all_labels), = encode_examples(load_training_data(str(path)), tok,
                                       config(path, max_length=256, train_on_inputs=True))
    assert all_labels == ids


def test_bundled_alpaca_splits_at_the_response(data_dir):
    records = json.loads((data_dir / "alpaca" / "alpaca_data_cleaned_first5000.json").read_text())
    pairs = load_training_data("alpaca")
    assert len(pairs) == len(records)
    prompt, response = pairs[1]
    assert prompt.endswith(RESPONSE_MARKER) and prompt + response == textdata.render_alpaca(records[1])


@pytest.mark.parametrize(("name", "content", "message"), [
    ("bad.jsonl", '{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "a", "input": ""}\n',
     r"bad\.jsonl line 2: record has no 'output' field \(found: instruction, input\)"),
    ("bad.json", '[\n {"instruction": "a", "output": "b"},\n\n {"input": "x",\n  "output": "y"}\n]',
     r"bad\.json line 4: record has no 'instruction' field"),
    ("bad2.jsonl", '{"instruction": "a", "output": 3}\n', r"line 1: 'output' must be a string"),
    ("broken.jsonl", '{"instruction": "a"\n', r"line 1 is not valid JSON"),
    ("empty.jsonl", "\n  \n", r"empty\.jsonl is empty"),
    ("empty.txt", "", r"empty\.txt is empty"),
    ("none.json", "[]", r"none\.json holds no records"),
    ("obj.json", '{"instruction": "a"}', r"must be a JSON array"),
    ("cut.json", '[\n{"instruction": "a", "output": "b"}\n{"instruction": "c"}]', r"line 3 is not valid JSON"),
    ("data.csv", "a,b", r"unsupported training file type '\.csv'; allowed: \.json"),
])
def test_bad_training_files_fail_clearly(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_training_data(str(path))


def test_unknown_sources_and_settings_name_the_allowed_values(tmp_path):
    with pytest.raises(DataError, match=r"unknown training data 'alpacca'; allowed: alpaca, c4, .*\.jsonl"):
        load_training_data("alpacca")
    with pytest.raises(DataError, match="does not exist"):
        load_training_data(str(tmp_path / "missing.jsonl"))
    with pytest.raises(MiniLLMError, match=r"rank must be an integer >= 1, got 0"):
        RecoveryConfig(rank=0)
    with pytest.raises(MiniLLMError, match=r"max_steps must be an integer >= 1, got 0"):
        RecoveryConfig(max_steps=0)
    text = tmp_path / "t.txt"
    text.write_text(WORDS * 10)
    with pytest.raises(MiniLLMError, match=r"unknown LoRA target module 'qproj'; .*q_proj"):
        train(pruned()[0], tiny_tokenizer(), config(text, target_modules=("qproj",)))


def test_before_and_after_metrics_are_recorded(text_file, tmp_path, data_dir):
    out = tmp_path / "run"
    evaluation = EvalConfig(perplexity=("wikitext2",), limit=2, seq_len=16)
    result = train(pruned()[0], tiny_tokenizer(), config(text_file, epochs=1), out_dir=out, evaluation=evaluation)
    record = json.loads((out / RECOVERY_FILE).read_text())
    assert record["before"] == result.before and record["after"] == result.after
    assert record["evaluation"]["limit"] == 2 and record["before"]["params"] == record["after"]["params"]
    assert record["before"]["ppl/wikitext2"] != record["after"]["ppl/wikitext2"]


# --- distillation -----------------------------------------------------------------------------------------------


def test_kd_loss_by_hand():
    from minillm_core.recovery.distill import kd_loss

    teacher = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    student = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [-9.0, 9.0]]])
    labels = torch.tensor([[IGNORE, 7, IGNORE]])  # only position 0 predicts a trained token (labels[1])
    p = torch.softmax(torch.tensor([1.0, 0.0]), 0)  # teacher at T=2: logits / 2
    expected = 4.0 * float((p * (p.log() - torch.log(torch.tensor([0.5, 0.5])))).sum())
    assert kd_loss(student, teacher, labels, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(teacher, teacher, labels).item() == pytest.approx(0.0, abs=1e-7)
    changed = student.clone()
    changed[0, 1:] = 100.0  # positions that predict no trained token do not count
    assert kd_loss(changed, teacher, labels, 2.0).item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(student, teacher, torch.full_like(labels, IGNORE)).item() == 0.0


def test_kd_alpha_zero_is_the_next_token_loss(text_file):
    from minillm_core.recovery.data import collate
    from minillm_core.recovery.distill import training_loss

    model, _ = pruned()
    teacher = tiny_model("llama-gqa")
    tok = tiny_tokenizer()
    examples = encode_examples(load_training_data(str(text_file)), tok, config(text_file))
    batch = collate(examples[:2], 0, torch.device("cpu"))
    sft = training_loss(model, None, batch, "sft", 1.0, 1.0)
    assert training_loss(model, teacher, batch, "kd", 1.0, 0.0).item() == pytest.approx(sft.item(), rel=1e-6)
    assert training_loss(model, teacher, batch, "kd", 1.0, 1.0).item() > 0


@pytest.mark.parametrize("kind", ["llama-gqa", "opt", "bloom"])
def test_kd_recovery_lowers_the_kl_to_the_teacher_and_leaves_both_models_alone(kind, text_file, tmp_path):
    model, p = pruned(kind)
    teacher = tiny_model(kind)  # the unpruned original of `pruned(kind)`
    tok = tiny_tokenizer()
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    before_s = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = config(text_file, method="kd", kd_temperature=2.0, epochs=3)
    result = train(model, tok, cfg, teacher=teacher, out_dir=tmp_path / "kd", plan=p)
    losses = [r["loss"] for r in result.losses]
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_t.items())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before_s.items())
    assert json.loads((tmp_path / "kd" / RECOVERY_FILE).read_text())["method"] == "kd"
    with pytest.raises(MiniLLMError, match="method kd distils the original model"):
        train(model, tok, cfg)
    with pytest.raises(MiniLLMError, match="unknown recovery method 'distil'"):
        config(text_file, method="distil")


def test_kd_resume_continues_exactly(text_file, tmp_path):
    model, _ = pruned()
    teacher = tiny_model("llama-gqa")
    tok = tiny_tokenizer()
    cfg = config(text_file, method="kd", kd_alpha=0.5)
    straight = train(model, tok, cfg, teacher=teacher)
    progress, stop = _stop_after(steps_per_epoch(16, cfg))
    first = train(model, tok, cfg, teacher=teacher, out_dir=tmp_path / "run", progress=progress, should_stop=stop)
    assert first.stopped
    with pytest.raises(MiniLLMError, match="method: 'kd' -> 'sft'"):
        train(model, tok, config(text_file), out_dir=tmp_path / "run")
    second = train(model, tok, cfg, teacher=teacher, out_dir=tmp_path / "run")
    torch.testing.assert_close(logits(second.model), logits(straight.model), atol=1e-6, rtol=1e-6)


def test_top_k_kd_loss_is_the_kl_of_the_coarsened_distributions():
    from minillm_core.recovery.distill import kd_loss
    from minillm_core.recovery.teacher_cache import kd_loss_top_k, top_k_targets

    gen = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(1, 3, 6, generator=gen), torch.randn(1, 3, 6, generator=gen)
    mask = torch.tensor([[True, False, True]])
    values, ids, tail = top_k_targets(teacher, 2, temperature=1.5)
    p = torch.softmax(teacher / 1.5, -1)
    assert torch.allclose(tail.exp(), 1 - p.topk(2, -1).values.sum(-1), atol=1e-6)  # the mass left to the rest
    expected = []
    for j in (0, 2):  # by hand: the two top tokens and one bucket for the other four
        top = p[0, j].topk(2).indices
        q = torch.softmax(student[0, j] / 1.5, -1)
        pc = torch.cat([p[0, j, top], (1 - p[0, j, top].sum())[None]])
        qc = torch.cat([q[top], (1 - q[top].sum())[None]])
        expected.append(float((pc * (pc / qc).log()).sum()))
    got = kd_loss_top_k(student, values, ids, tail, mask, temperature=1.5).item()
    assert got == pytest.approx(2.25 * sum(expected) / 2, rel=1e-5)
    labels = torch.tensor([[0, 7, IGNORE, 7]])  # kd_loss masks through labels[:, 1:]: positions 0 and 2 predict
    full = kd_loss(torch.cat([student, student[:, :1]], 1), torch.cat([teacher, teacher[:, :1]], 1), labels, 1.5)
    assert got <= full.item() + 1e-6  # coarsening never raises a KL
    every = top_k_targets(teacher, 6, 1.5)  # k = vocabulary: the full KL, the tail empty
    assert kd_loss_top_k(student, *every, mask, 1.5).item() == pytest.approx(full.item(), rel=1e-5)


def test_cached_top_k_kd_with_the_whole_vocabulary_trains_like_kd_without_the_teacher(text_file, tmp_path):
    model, _ = pruned()
    teacher = tiny_model("llama-gqa")
    tok = tiny_tokenizer()
    vocab = teacher.get_output_embeddings().weight.shape[0]
    live = train(model, tok, config(text_file, method="kd", kd_temperature=2.0), teacher=teacher)
    calls = []

    def loader():
        calls.append(1)
        return teacher

    cfg = config(text_file, method="kd", kd_temperature=2.0, kd_top_k=vocab)
    progress, stop = _stop_after(steps_per_epoch(16, cfg))
    first = train(model, tok, cfg, teacher=loader, out_dir=tmp_path / "run", progress=progress, should_stop=stop)
    assert first.stopped and calls == [1] and (tmp_path / "run" / TEACHER_DIR).is_dir()
    second = train(model, tok, cfg, teacher=loader, out_dir=tmp_path / "run")  # resumes on the cache alone
    assert calls == [1] and not (tmp_path / "run" / TEACHER_DIR).exists()  # the finished save drops the cache
    torch.testing.assert_close(logits(second.model), logits(live.model), atol=1e-5, rtol=1e-5)
    killed = tmp_path / "killed"  # a run killed while writing its teacher's targets: the next one starts cleanly
    (killed / ".teacher_topk.partial-999999999-x").mkdir(parents=True)
    assert not train(model, tok, cfg, teacher=teacher, out_dir=killed).stopped
    assert not any(p.name.startswith(".teacher_topk") for p in killed.iterdir())
    small = train(model, tok, config(text_file, method="kd", kd_top_k=4), teacher=teacher)  # in a temporary folder
    losses = [r["loss"] for r in small.losses]
    assert losses[-1] < losses[0]
    with pytest.raises(MiniLLMError, match="kd_top_k caches the teacher's logits for --method kd"):
        config(text_file, kd_top_k=8)


def test_self_data_is_written_by_the_original_and_needs_it(tmp_path):
    model, p = pruned()
    teacher = tiny_model("llama-gqa")
    tok = tiny_tokenizer()
    cfg = RecoveryConfig(data="self", n_samples=6, max_length=12, batch_size=3, epochs=2, learning_rate=1e-2,
                         warmup_steps=0, method="kd")
    result = train(model, tok, cfg, teacher=teacher, out_dir=tmp_path / "self", plan=p)
    record = json.loads((tmp_path / "self" / RECOVERY_FILE).read_text())
    assert record["examples"] == 6 and record["tokens"] == 2 * 6 * 12  # 6 generated rows of 12 tokens, 2 epochs
    again = train(model, tok, cfg, teacher=teacher)
    assert again.record["fingerprint"] == record["fingerprint"]  # the same text for the same seed
    assert result.losses[-1]["loss"] < result.losses[0]["loss"]
    with pytest.raises(MiniLLMError, match="training data 'self' is written by the original model"):
        train(model, tok, RecoveryConfig(data="self", n_samples=6))


def test_eval_every_records_perplexity_against_training_tokens(text_file, tmp_path, data_dir):
    model, _ = pruned()
    tok = tiny_tokenizer()
    evaluation = EvalConfig(perplexity=("wikitext2",), limit=2, seq_len=16)
    cfg = config(text_file, eval_every=2, epochs=1)  # 4 updates: measured before, after 2, after 4
    plain = train(model, tok, config(text_file, epochs=1))
    result = train(model, tok, cfg, evaluation=evaluation, out_dir=tmp_path / "r")
    curve = result.record["curve"]
    assert [c["step"] for c in curve] == [0, 2, 4] and [c["tokens"] for c in curve] == [0, 128, 256]  # 4 x 16 a step
    assert curve[0]["ppl/wikitext2"] == result.before["ppl/wikitext2"]
    assert curve[-1]["ppl/wikitext2"] == result.after["ppl/wikitext2"]
    torch.testing.assert_close(logits(result.model), logits(plain.model))  # measuring changes nothing
    assert perplexity_curve(tmp_path / "r") == curve  # the finished run's, from recovery.json
    progress, stop = _stop_after(3)  # live: the points so far, kept across a stop and a resume
    stopped = train(model, tok, cfg, evaluation=evaluation, out_dir=tmp_path / "live", progress=progress,
                    should_stop=stop)
    assert stopped.stopped and [c["step"] for c in perplexity_curve(tmp_path / "live")] == [2]
    resumed = train(model, tok, cfg, evaluation=evaluation, out_dir=tmp_path / "live")
    assert [c["step"] for c in resumed.record["curve"]] == [0, 2, 4]
    with pytest.raises(MiniLLMError, match="eval_every measures the model between updates"):
        config(text_file, method="local", trainable="full", eval_every=2)


def test_a_curve_on_other_windows_than_before_and_after_measures_its_own_ends(text_file, data_dir):
    from minillm_core.evaluation.perplexity import perplexity_on

    model, _ = pruned()
    tok = tiny_tokenizer()
    curve_on = EvalConfig(perplexity=("wikitext2",), limit=1, seq_len=16)
    full = EvalConfig(perplexity=("wikitext2",), limit=None, seq_len=16)  # the headline points on the whole split
    result = train(model, tok, config(text_file, eval_every=2, epochs=1), evaluation=full, curve=curve_on)
    curve = result.record["curve"]
    assert [c["step"] for c in curve] == [0, 2, 4]
    assert curve[0]["ppl/wikitext2"] == pytest.approx(perplexity_on(model, tok, "wikitext2", seq_len=16, limit=1).ppl)
    assert curve[-1]["ppl/wikitext2"] == pytest.approx(
        perplexity_on(result.model, tok, "wikitext2", seq_len=16, limit=1).ppl, rel=1e-5)
    bare = train(model, tok, config(text_file, eval_every=2, epochs=1), curve=curve_on)  # the caller has the ends
    assert [c["step"] for c in bare.record["curve"]] == [2] and bare.before == {}


# --- every weight trained (trainable full) -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["llama-gqa", "opt", "bloom"])
def test_full_kd_trains_every_weight_and_leaves_the_callers_model_alone(kind, text_file, tmp_path):
    model, p = pruned(kind)
    teacher = tiny_model(kind)
    tok = tiny_tokenizer()
    weights = params(model)
    cfg = config(text_file, method="kd", trainable="full", learning_rate=1e-3, epochs=3)
    result = train(model, tok, cfg, teacher=teacher, out_dir=tmp_path / "full", plan=p)
    losses = [r["loss"] for r in result.losses]
    if kind != "bloom":  # BLOOM's tiny pruned model starts within 1e-5 nats of its original: nothing left to learn
        assert losses[-1] < 0.7 * losses[0]
    assert type(result.model) is type(model) and not any(q.requires_grad for q in result.model.parameters())
    trained = dict(result.model.named_parameters())
    assert all(not torch.equal(weights[n], trained[n]) for n in weights)  # every weight moved, embeddings included
    assert all(torch.equal(weights[n], q) for n, q in model.named_parameters())  # the caller's copy did not
    record = json.loads((tmp_path / "full" / RECOVERY_FILE).read_text())
    assert record["trainable"] == "full" and record["trainable_params"] == sum(w.numel() for w in weights.values())
    reloaded, _ = load_pruned(tmp_path / "full", dtype="float32", device="cpu")
    torch.testing.assert_close(logits(reloaded), logits(result.model))


def test_full_resume_continues_exactly_and_keep_adapter_is_refused(text_file, tmp_path):
    model, _ = pruned()
    teacher = tiny_model("llama-gqa")
    tok = tiny_tokenizer()
    cfg = config(text_file, method="kd", trainable="full", learning_rate=1e-3)
    straight = train(model, tok, cfg, teacher=teacher)
    progress, stop = _stop_after(steps_per_epoch(16, cfg))
    assert train(model, tok, cfg, teacher=teacher, out_dir=tmp_path / "run", progress=progress,
                 should_stop=stop).stopped
    with pytest.raises(MiniLLMError, match="trainable: 'full' -> 'lora'"):
        train(model, tok, config(text_file, method="kd"), teacher=teacher, out_dir=tmp_path / "run")
    second = train(model, tok, cfg, teacher=teacher, out_dir=tmp_path / "run")
    torch.testing.assert_close(logits(second.model), logits(straight.model), atol=1e-6, rtol=1e-6)
    with pytest.raises(MiniLLMError, match="with trainable full there is none"):
        config(text_file, trainable="full", merge=False)
    with pytest.raises(MiniLLMError, match="allowed: lora, full"):
        config(text_file, trainable="everything")


# --- block-local distillation (method local) ---------------------------------------------------------------------


def test_pack_rows_joins_the_examples_into_full_rows():
    rows = pack_rows([([1, 2, 3], [1, 2, 3]), ([4, 5], [-100, 5]), ([6, 7, 8, 9], [6, 7, 8, 9])], 4)
    assert rows.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]  # 9 left over: no padding anywhere
    with pytest.raises(DataError, match="fewer than one row"):
        pack_rows([([1, 2], [1, 2])], 4)


@pytest.mark.parametrize("kind", ["llama-gqa", "opt", "bloom"])
def test_local_fits_every_pruned_layer_to_the_original_and_leaves_both_models_alone(kind, text_file, tmp_path):
    model, p = pruned(kind)
    teacher = tiny_model(kind)
    tok = tiny_tokenizer()
    student_before = {k: v.clone() for k, v in model.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = config(text_file, method="local", trainable="full", learning_rate=1e-2, epochs=4)
    result = train(model, tok, cfg, teacher=teacher, out_dir=tmp_path / "local", plan=p)
    layers = result.record["layers"]
    pruned_layers = [i for i, k in enumerate(p.layers) if len(k.channels) < p.original[i].intermediate
                     or len(k.heads) < p.original[i].num_heads]
    assert [r["layer"] for r in layers] == pruned_layers
    assert all(r["error_after"] < r["error_before"] for r in layers)
    assert result.record["method"] == "local" and result.steps == len(result.losses) > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in student_before.items())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    reloaded, _ = load_pruned(tmp_path / "local", dtype="float32", device="cpu")
    torch.testing.assert_close(logits(reloaded), logits(result.model))
    again = train(model, tok, cfg, teacher=teacher)  # seeded: the same result
    torch.testing.assert_close(logits(again.model), logits(result.model), atol=0, rtol=0)


def test_local_refusals(text_file):
    model, _ = pruned()
    with pytest.raises(MiniLLMError, match="method local distils the original model"):
        train(model, tiny_tokenizer(), config(text_file, method="local", trainable="full"))
    for bad in ({"trainable": "lora"}, {"trainable": "full", "max_steps": 3}):
        with pytest.raises(MiniLLMError, match="pass --trainable full, and no --max-steps"):
            config(text_file, method="local", **bad)
