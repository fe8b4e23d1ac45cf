"""The teacher's top-k log-probs, computed once and kept on disk, so distillation trains without the teacher.

For every training example and every position that predicts a real token, the teacher's k most likely next tokens
(ids and log-probs at temperature T) and the log of the probability mass left to all other tokens (the tail) are
written to safetensors shards (`SHARD` examples per file, read back as slices per batch: memory stays bounded).

The approximation: the loss is KL(P_t || P_s) between the two distributions coarsened to the teacher's top-k
tokens plus one bucket for the rest (the student's bucket is its mass outside those k tokens). Merging outcomes can
only lower a KL (log-sum inequality), so this is a lower bound of the full KL, equal to it when k is the vocabulary.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from minillm_core.progress import Progress, no_progress

SHARD = 512  # examples per safetensors file
META = "teacher_cache.json"
FORMAT = 1


def top_k_targets(teacher_logits: torch.Tensor, k: int, temperature: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[..., vocab] logits -> (top-k log-probs [..., k] float32, their ids [..., k] int32, log tail mass [...])."""
    logp = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    tail = logp.scatter(-1, ids, float("-inf")).logsumexp(-1)
    return values, ids.to(torch.int32), tail


def kd_loss_top_k(student_logits: torch.Tensor, values: torch.Tensor, ids: torch.Tensor, tail: torch.Tensor,
                  mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * KL of the coarsened distributions (the teacher's top-k tokens + one tail bucket), averaged over the
    positions where `mask` is true. student_logits [b, n, vocab]; values, ids [b, n, k]; tail, mask [b, n]."""
    if not bool(mask.any()):
        return student_logits.sum() * 0.0
    s = F.log_softmax(student_logits[mask].float() / temperature, dim=-1)  # [m, vocab]
    idx = ids[mask].long()
    s_k = s.gather(-1, idx)
    s_tail = s.scatter(-1, idx, float("-inf")).logsumexp(-1)
    t_k, t_tail = values[mask].float(), tail[mask].float()
    head = (t_k.exp() * (t_k - s_k)).sum(-1)
    p_tail = t_tail.exp()
    rest = torch.where(p_tail > 0, p_tail * (t_tail - s_tail), torch.zeros_like(p_tail))  # 0 log 0 = 0
    return (head + rest).mean() * temperature**2


def identity(teacher: Any, fingerprint: str, k: int, temperature: float) -> dict[str, Any]:
    """What a cache was made from: the data, k, T and the teacher (its config and a checksum of its weights)."""
    h = hashlib.sha256(json.dumps(teacher.config.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for p in teacher.parameters():
            h.update(f"{float(p.sum(dtype=torch.float64)):.10e}".encode())
    return {"format": FORMAT, "data_fingerprint": fingerprint, "k": k, "temperature": temperature,
            "teacher": h.hexdigest()[:16]}


@dataclass
class TeacherCache:
    """A folder of shards, each `SHARD` examples: `values` / `ids` [rows, k] and `tail` [rows] of all its examples'
    positions one after the other (n - 1 rows for an example of n tokens), and `offsets` [examples + 1] into them."""

    folder: Path
    k: int
    lengths: list[int]  # tokens per example

    @classmethod
    def open(cls, folder: Path, expected: dict[str, Any] | None = None) -> TeacherCache | None:
        """The cache in `folder`, or None when there is none (or it was made from other data, k or T: `expected`
        without its teacher key compares everything but the teacher)."""
        meta_file = folder / META
        if not meta_file.is_file():
            return None
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if expected is not None and any(meta.get(key) != value for key, value in expected.items()):
            return None
        return cls(folder, int(meta["k"]), [int(n) for n in meta["lengths"]])

    def targets(self, indices: Sequence[int], width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded (values, ids, tail) of the examples `indices`, `[b, width - 1, ...]` like a collated batch
        (read as slices of the shards: only these examples' rows come into memory)."""
        from safetensors import safe_open

        values = torch.zeros(len(indices), width - 1, self.k)
        ids = torch.zeros(len(indices), width - 1, self.k, dtype=torch.int32)
        tail = torch.full((len(indices), width - 1), float("-inf"))
        for row, i in enumerate(indices):
            shard, within = divmod(i, SHARD)
            with safe_open(str(self.folder / f"shard-{shard:05d}.safetensors"), framework="pt") as f:
                start, end = (int(x) for x in f.get_slice("offsets")[within:within + 2])
                values[row, :end - start] = f.get_slice("values")[start:end]
                ids[row, :end - start] = f.get_slice("ids")[start:end]
                tail[row, :end - start] = f.get_slice("tail")[start:end]
        return values, ids, tail


@torch.inference_mode()
def build(teacher: Any, examples: Sequence[tuple[list[int], list[int]]], k: int, temperature: float, folder: Path,
          identity: dict[str, Any], batch_size: int = 4, progress: Progress = no_progress) -> TeacherCache:
    """Run `teacher` over every example once and write its top-k targets to `folder` (replaced atomically).

    Each shard's rows go into tensors allocated once for the shard (small per-example tensors kept beside the large
    temporaries of the top-k fragment the heap: RSS grew by ~60 MB an example)."""
    from safetensors.torch import save_file

    from minillm_core.devices import input_device
    from minillm_core.outputs import staging_dir

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(folder)
    vocab = teacher.get_output_embeddings().weight.shape[0]
    k = min(k, vocab)
    lengths = [len(x) for x, _ in examples]
    try:
        device = input_device(teacher)
        teacher.eval()
        for first in range(0, len(examples), SHARD):
            part = examples[first:first + SHARD]
            offsets = torch.tensor([0, *itertools.accumulate(len(x) - 1 for x, _ in part)], dtype=torch.int64)
            values = torch.empty(int(offsets[-1]), k)
            ids = torch.empty(int(offsets[-1]), k, dtype=torch.int32)
            tail = torch.empty(int(offsets[-1]))
            for start in range(0, len(part), batch_size):
                chunk = part[start:start + batch_size]
                width = max(len(x) for x, _ in chunk)
                batch = torch.zeros(len(chunk), width, dtype=torch.long)
                mask = torch.zeros(len(chunk), width, dtype=torch.long)
                for row, (x, _) in enumerate(chunk):
                    batch[row, :len(x)], mask[row, :len(x)] = torch.tensor(x), 1
                logits = teacher(input_ids=batch.to(device), attention_mask=mask.to(device), use_cache=False).logits
                v, i, t = top_k_targets(logits[:, :-1].cpu(), k, temperature)  # the whole batch at once
                del logits
                for row, (x, _) in enumerate(chunk):
                    a, b = int(offsets[start + row]), int(offsets[start + row + 1])
                    values[a:b], ids[a:b], tail[a:b] = v[row, :len(x) - 1], i[row, :len(x) - 1], t[row, :len(x) - 1]
                progress(min(first + start + batch_size, len(examples)), len(examples), "teacher top-k")
            save_file({"values": values, "ids": ids, "tail": tail, "offsets": offsets},
                      str(tmp / f"shard-{first // SHARD:05d}.safetensors"))
        (tmp / META).write_text(json.dumps({**identity, "lengths": lengths}), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TeacherCache(folder, k, lengths)
