"""Generation A/B: the same prompts through several models (original, pruned), side by side with tokens/s.

Greedy by default; seeded sampling is reproducible because every model gets the same seed before each prompt.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from minillm_core.devices import input_device


@dataclass(frozen=True)
class Generation:
    model: str
    prompt: str
    text: str
    new_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


@torch.inference_mode()
def generate(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 48, sample: bool = False,
             temperature: float = 0.7, seed: int = 0, label: str = "", chat: bool = True, streamer: Any = None
             ) -> Generation:
    """One completion; with `chat`, the prompt goes through the chat template when the tokenizer has one,
    otherwise the text is continued as is. `streamer` (transformers' `TextIteratorStreamer`) receives the text as
    it is generated."""
    device = input_device(model)
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
    ids = ids.to(device)
    if sample:  # greedy decoding needs no seed; leave the caller's global RNG alone
        torch.manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = {"do_sample": True, "temperature": temperature} if sample else {"do_sample": False}
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=max_new_tokens, pad_token_id=pad, streamer=streamer, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    new = out[0, ids.shape[1]:]
    return Generation(label, prompt, tokenizer.decode(new, skip_special_tokens=True), int(new.numel()), seconds)


def generate_ab(models: dict[str, Any], tokenizer: Any, prompts: list[str], **kwargs: Any) -> list[Generation]:
    """Every prompt through every model (same settings and seed), in prompt-major order."""
    return [generate(m, tokenizer, p, label=name, **kwargs) for p in prompts for name, m in models.items()]
