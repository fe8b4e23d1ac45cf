"""Out-of-core pruning benchmark (issue 16): peak memory of pruning one decoder layer at a time vs in memory.

A. The bundled SmolLM2-135M at 20%: `minillm prune` in memory vs `minillm prune --out-of-core`, the same settings
   (uniform widths, units by OBS, re-fit, c4 calibration --calib rows x 128 tokens, seed 0), each in its own process:
   peak RSS (the process's ru_maxrss), wall time, and whether the two saved models are equal tensor for tensor.
B. A random-weight LLaMA-shaped model whose float32 weights are larger than a memory limit the benchmark sets with a
   cgroup (v1 or v2, when this machine lets root create one; otherwise only peak RSS is reported): written to disk
   one layer at a time, pruned at 20% out-of-core inside the limit; the in-memory prune of the same model is run
   inside the same limit for contrast; the result then reloads (outside the limit) and runs a forward pass.
Outputs: bench/results/outofcore.json and outofcore.md. Run: `MINILLM_DATA_DIR=../shared/data python
bench/bench_outofcore.py` (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(__file__).resolve().parent.parent / ".cache" / "bench_outofcore"
MINILLM = str(Path(sys.executable).with_name("minillm"))
BIG = {"hidden_size": 2048, "intermediate_size": 4096, "num_hidden_layers": 20, "num_attention_heads": 16,
       "num_key_value_heads": 4, "vocab_size": 49152, "max_position_embeddings": 2048, "tie_word_embeddings": True}


def run(cmd: list[str], cgroup: Path | None = None) -> dict:
    """Run `cmd` (in `cgroup` when given); its exit code, wall time, peak RSS (MB, its own ru_maxrss) and the
    cgroup's peak."""
    t0 = time.perf_counter()
    log = WORK / "last-stderr.txt"
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=(lambda: _join(cgroup)) if cgroup else None)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    row = {"cmd": " ".join(cmd), "rc": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
           "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
           "stderr_tail": log.read_text(errors="replace").strip().splitlines()[-3:]}
    if cgroup is not None:
        row["cgroup_peak_mb"] = round(_cgroup_peak(cgroup) / 2**20, 1)
    return row


def make_cgroup(limit_mb: int) -> Path | None:
    """A memory cgroup limited to `limit_mb` (None when this machine does not allow one)."""
    for base, limit_file in ((Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"),
                             (Path("/sys/fs/cgroup"), "memory.max")):
        if not (base / limit_file).exists() and not (base / "cgroup.controllers").exists():
            continue
        group = base / f"minillm-bench-{os.getpid()}"
        try:
            group.mkdir(exist_ok=True)
            (group / limit_file).write_text(str(limit_mb * 2**20))
            swap = group / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(str(limit_mb * 2**20))  # no swapping past the limit either
            return group
        except OSError:
            continue
    return None


def _join(group: Path) -> None:
    (group / "cgroup.procs").write_text(str(os.getpid()))


def _cgroup_peak(group: Path) -> int:
    for name in ("memory.max_usage_in_bytes", "memory.peak"):
        if (group / name).exists():
            return int((group / name).read_text())
    return 0


def reset_peak(group: Path) -> None:
    for name in ("memory.max_usage_in_bytes", "memory.peak"):
        if (group / name).exists():
            with contextlib.suppress(OSError):  # cgroup v2 has no reset: its peak is the cgroup's lifetime peak
                (group / name).write_text("0")


def write_random_model(folder: Path, tokenizer_from: Path) -> float:
    """A random LLaMA-shaped model (BIG) written one layer at a time (never whole in memory); its float32 GB."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():
        return json.loads((folder / "size.json").read_text())["gb"]
    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**BIG)
    with init_empty_weights():
        skeleton = LlamaForCausalLM(config)
    torch.manual_seed(0)
    groups = dict.fromkeys(n.split(".")[2] if n.startswith("model.layers.") else "rest"
                           for n, _ in skeleton.named_parameters())
    total = 0
    weight_map = {}
    for key in groups:
        tensors = {}
        for name, p in skeleton.named_parameters():
            mine = name.split(".")[2] if name.startswith("model.layers.") else "rest"
            if mine != key or name == "lm_head.weight":
                continue
            tensors[name] = torch.ones(p.shape) if "norm" in name else torch.randn(p.shape) * 0.02
        file = f"model-{key}.safetensors"
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        total += sum(t.numel() * 4 for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, file))
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    config.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(folder)
    (folder / "size.json").write_text(json.dumps({"gb": total / 1e9}))
    return total / 1e9


def same_weights(a: Path, b: Path) -> bool:
    from safetensors import safe_open

    def tensors(folder: Path) -> dict[str, torch.Tensor]:
        out = {}
        for file in folder.glob("*.safetensors"):
            with safe_open(str(file), framework="pt") as f:
                out |= {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
        return out

    ta, tb = tensors(a), tensors(b)
    return set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--limit-mb", type=int, default=2048, help="the cgroup memory limit of part B")
    ap.add_argument("--parts", default="A,B")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    payload: dict = {"calibration": f"c4, {args.calib} x 128 tokens, seed 0", "threads": os.environ.get(
        "OMP_NUM_THREADS", str(torch.get_num_threads()))}
    common = ["--ratio", "0.2", "--n-samples", str(args.calib), "--device", "cpu", "--json", "--overwrite"]
    if "A" in args.parts:
        mem = run([MINILLM, "prune", "--model", "smollm2-135m", "--out", str(WORK / "a-mem"), *common])
        ooc = run([MINILLM, "prune", "--model", "smollm2-135m", "--out", str(WORK / "a-ooc"), "--out-of-core",
                   *common])
        payload["smollm2"] = {"in_memory": mem, "out_of_core": ooc,
                              "identical": mem["rc"] == ooc["rc"] == 0 and same_weights(WORK / "a-mem",
                                                                                        WORK / "a-ooc")}
        print(json.dumps(payload["smollm2"], indent=1), file=sys.stderr)
    if "B" in args.parts:
        from minillm_core import workflow

        big = WORK / "random-llama"
        gb = write_random_model(big, workflow.model_dir_of("smollm2-135m"))
        group = make_cgroup(args.limit_mb)
        part = {"config": BIG, "float32_gb": round(gb, 2), "limit_mb": args.limit_mb if group else None,
                "limit": "cgroup memory limit (memory + swap)" if group else "none (no cgroup allowed here)"}
        ooc = run([MINILLM, "prune", "--model", str(big), "--out", str(WORK / "b-ooc"), "--out-of-core",
                   "--protect", "", *common], group)
        part["out_of_core"] = ooc
        if group is not None:
            reset_peak(group)
            part["in_memory"] = run([MINILLM, "prune", "--model", str(big), "--out", str(WORK / "b-mem"),
                                     "--protect", "", *common], group)
            shutil.rmtree(WORK / "b-mem", ignore_errors=True)
        if ooc["rc"] == 0:
            t0 = time.perf_counter()
            loaded = workflow.load(str(WORK / "b-ooc"), dtype="float32", device="cpu")
            with torch.no_grad():
                logits = loaded.model(torch.randint(0, 49152, (1, 16))).logits
            part["reload"] = {"params": workflow.count_params(loaded.model), "finite_logits":
                              bool(torch.isfinite(logits).all()), "seconds": round(time.perf_counter() - t0, 1)}
        if group is not None:
            group.rmdir()
        payload["random_llama"] = part
        print(json.dumps(part, indent=1), file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    old = json.loads((RESULTS / "outofcore.json").read_text()) if (RESULTS / "outofcore.json").is_file() else {}
    payload = old | payload
    (RESULTS / "outofcore.json").write_text(json.dumps(payload, indent=1))
    write_markdown(payload, args)


def write_markdown(payload: dict, args: argparse.Namespace) -> None:
    lines = ["# Out-of-core pruning: peak memory (issue 16)", "",
             f"`minillm prune --ratio 0.2` (uniform widths, units by OBS, re-fit; {payload['calibration']}), float32, "
             f"CPU, {payload['threads']} thread(s); each prune in its own process, peak RSS = its ru_maxrss. "
             "Reproduce: `MINILLM_DATA_DIR=../shared/data python bench/bench_outofcore.py`.", ""]
    if "smollm2" in payload:
        s = payload["smollm2"]
        lines += ["## SmolLM2-135M (540 MB of float32 weights)", "",
                  "| prune | peak RSS (MB) | wall (s) | exit |", "|---|---|---|---|",
                  f"| in memory | {s['in_memory']['peak_rss_mb']:.0f} | {s['in_memory']['seconds']:.0f} | "
                  f"{s['in_memory']['rc']} |",
                  f"| out-of-core (`--out-of-core`) | {s['out_of_core']['peak_rss_mb']:.0f} | "
                  f"{s['out_of_core']['seconds']:.0f} | {s['out_of_core']['rc']} |", "",
                  f"The two saved models are equal tensor for tensor: {s['identical']}.", ""]
    if "random_llama" in payload:
        b = payload["random_llama"]
        c = b["config"]
        lines += [f"## A random LLaMA-shaped model bigger than the memory limit ({b['float32_gb']:.2f} GB float32)", "",
                  f"hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, {c['num_attention_heads']} heads / "
                  f"{c['num_key_value_heads']} KV heads, MLP {c['intermediate_size']}, vocabulary {c['vocab_size']} "
                  f"(tied), random N(0, 0.02) weights, written one layer at a time. Limit: {b['limit']}"
                  + (f", {b['limit_mb']} MB." if b["limit_mb"] else "."), "",
                  "| prune | exit | peak RSS (MB) | cgroup peak (MB) | wall (s) |", "|---|---|---|---|---|"]
        for label, key in (("out-of-core", "out_of_core"), ("in memory (same limit)", "in_memory")):
            if key in b and not (key == "in_memory" and "in_memory_note" in b):
                r = b[key]
                lines.append(f"| {label} | {r['rc']} | {r['peak_rss_mb']:.0f} | {r.get('cgroup_peak_mb', '-')} | "
                             f"{r['seconds']:.0f} |")
        lines += [f"\n{b[k]}" for k in ("out_of_core_note", "in_memory_note") if k in b]
        if "reload" in b:
            lines += ["", f"The result reloads (outside the limit): {b['reload']['params']:,} parameters, finite "
                      f"logits: {b['reload']['finite_logits']}."]
    (RESULTS / "outofcore.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
