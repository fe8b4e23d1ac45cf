"""Quality gates: a small declarative contract (YAML or JSON) that a pruned model must meet, like a CI test.

Each clause bounds one metric of `RunMetrics.flat()`: `retained/ppl/wikitext2 <= 1.3`, `speedup/decode/bs1 >= 1.1`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from minillm_core.errors import MiniLLMError
from minillm_core.evaluation.ab import AB_METRICS, AB_REFERENCE_METRICS, ABConfig
from minillm_core.evaluation.suite import EvalConfig


class ContractError(MiniLLMError):
    """A contract file that cannot be read or understood."""


MAX_CONTRACT_BYTES = 64 * 1024  # a contract is a few clauses; anything bigger is a mistake or an attack
#: Every metric a clause can name (`RunMetrics.flat()`), optionally prefixed by original/ or retained/.
METRIC_FORMS = ("params", "size_mb", "disk_mb", "param_ratio", "ppl/<dataset>", "kl/<dataset>",
                "agreement/<dataset>", "acc/<task>", "acc/average", "acc_norm/<task>", "speed/decode_tps/bs<N>",
                "speed/prefill_ms/bs<N>", "speedup/decode/bs<N>", "speedup/prefill/bs<N>", "memory/<kind>_mb",
                "llamacpp/ppl/<dataset>", "llamacpp/decode_tps/t<N>", "llamacpp/file_mb",
                "speedup/llamacpp_decode_tps/t<N>", *(f"ab/{m}" for m in (*AB_METRICS, *AB_REFERENCE_METRICS)))
_METRIC = re.compile(
    r"(original/|retained/)?(params|size_mb|disk_mb|param_ratio|(ppl|kl|agreement|acc|acc_norm|llamacpp/ppl)/[\w.-]+"
    r"|speed/(decode_tps|prefill_ms)/bs\d+|speedup/(decode|prefill)/bs\d+|memory/\w+_mb|llamacpp/decode_tps/t\d+"
    r"|llamacpp/file_mb|speedup/llamacpp_decode_tps/t\d+"
    rf"|ab/({'|'.join((*AB_METRICS, *AB_REFERENCE_METRICS))}))")
#: Contract templates shipped with the package (minillm_core/contracts/NAME.yaml): `--contract NAME` loads one.
TEMPLATES = {
    "chat-assistant": "a chat model that must keep answering like the original (A/B on the chat suite)",
    "extraction": "classification / extraction: the exact answers must survive (A/B on the instructions suite)",
    "size-first": "as small as possible while perplexity stays within 2x and answers stay mostly right",
}


def _no_aliases_loader():
    """PyYAML's safe loader without anchors/aliases: nested aliases expand exponentially (a 403-byte contract
    once took 4 GB), and a contract has no use for them."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.events.AliasEvent):
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a contract",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)

    return Loader


def _bound(value: Any, what: str) -> float:
    """A finite number; a numeric string too (YAML 1.1 reads `1.0e12` as a string), never a boolean."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise ContractError(f"{what} must be a finite number, got {value!r}")
    return float(number)


EXAMPLE = """\
# minillm quality contract: every clause must hold for the pruned model
name: smollm2-ship
clauses:
  - metric: retained/ppl/wikitext2   # pruned / original perplexity
    max: 1.3
  - metric: retained/acc/average     # pruned / original mean zero-shot accuracy
    min: 0.9
  - metric: speedup/decode/bs1       # measured decode tokens/s, pruned / original
    min: 1.1
"""


@dataclass(frozen=True)
class Clause:
    metric: str
    min: float | None = None
    max: float | None = None

    def describe(self) -> str:
        parts = ([f">= {self.min:g}"] if self.min is not None else []) + (
            [f"<= {self.max:g}"] if self.max is not None else [])
        return f"{self.metric} {' and '.join(parts)}"

    def holds(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


@dataclass(frozen=True)
class ClauseResult:
    clause: Clause
    value: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.clause.metric, "min": self.clause.min, "max": self.clause.max, "value": self.value,
                "passed": self.passed}


CONTRACT_KEYS = ("name", "description", "prompts", "clauses")


@dataclass(frozen=True)
class Contract:
    name: str
    clauses: tuple[Clause, ...]
    prompts: str | None = None  # the A/B prompt suite `ab/` clauses are measured on (bundled name or file path)
    description: str = ""

    @classmethod
    def from_dict(cls, data: Any, source: str = "contract") -> Contract:
        if not isinstance(data, dict) or not isinstance(data.get("clauses"), list) or not data["clauses"]:
            raise ContractError(f"{source}: expected a mapping with a non-empty 'clauses' list; example:\n{EXAMPLE}")
        unknown = sorted(set(map(str, data)) - set(CONTRACT_KEYS))
        if unknown:
            raise ContractError(f"{source}: unknown key(s) {unknown}; allowed: {', '.join(CONTRACT_KEYS)}")
        prompts = data.get("prompts")
        if prompts is not None and (not isinstance(prompts, str) or not prompts.strip()):
            raise ContractError(f"{source}: 'prompts' must name a prompt suite (a bundled name or a file path)")
        clauses = []
        for i, c in enumerate(data["clauses"]):
            if not isinstance(c, dict) or not isinstance(c.get("metric"), str):
                raise ContractError(f"{source}: clause {i + 1} needs a 'metric' name")
            extra = set(c) - {"metric", "min", "max"}
            if extra:
                raise ContractError(f"{source}: clause {i + 1} has unknown keys {sorted(extra)}; allowed: metric, min, "
                                    "max")
            if c.get("min") is None and c.get("max") is None:
                raise ContractError(f"{source}: clause {i + 1} ({c['metric']}) needs 'min' or 'max'")
            if not _METRIC.fullmatch(c["metric"]):
                raise ContractError(f"{source}: clause {i + 1}: unknown metric {c['metric']!r}; metrics: "
                                    f"{', '.join(METRIC_FORMS)} (optionally prefixed original/ or retained/)")
            bounds = {k: _bound(c[k], f"{source}: clause {i + 1} {k}") for k in ("min", "max")
                      if c.get(k) is not None}
            if bounds.get("min", -math.inf) > bounds.get("max", math.inf):
                raise ContractError(f"{source}: clause {i + 1} ({c['metric']}): min {bounds['min']:g} is above max "
                                    f"{bounds['max']:g}; no value could pass")
            clauses.append(Clause(c["metric"], **bounds))
        return cls(str(data.get("name", source)), tuple(clauses), prompts, str(data.get("description") or ""))

    @property
    def needs_ab(self) -> bool:
        return any(c.metric.removeprefix("retained/").removeprefix("original/").startswith("ab/")
                   for c in self.clauses)

    @classmethod
    def load(cls, path: str | Path) -> Contract:
        """A contract file (YAML or JSON), or a bundled template by name (`TEMPLATES`) when no such file exists.

        A relative `prompts` path is read relative to the contract's folder, as a person writing it expects.
        """
        path = Path(path)
        if str(path) in TEMPLATES and not path.exists():
            from importlib import resources

            path = Path(str(resources.files("minillm_core").joinpath("contracts", f"{path}.yaml")))
        elif not path.exists() and not path.suffix:
            raise ContractError(f"no contract file {str(path)!r}; bundled templates: {', '.join(TEMPLATES)}")
        contract = cls._read(path)
        if contract.prompts and not _is_suite_name(contract.prompts) and not Path(contract.prompts).is_absolute():
            contract = replace(contract, prompts=str(path.parent / contract.prompts))
        return contract

    @classmethod
    def _read(cls, path: Path) -> Contract:
        import yaml

        try:
            with path.open("rb") as f:
                raw = f.read(MAX_CONTRACT_BYTES + 1)
            text = raw.decode("utf-8")
        except OSError as exc:
            raise ContractError(f"cannot read contract {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ContractError(f"contract {path} is not UTF-8 text: {exc}") from None
        if len(raw) > MAX_CONTRACT_BYTES:
            raise ContractError(f"contract {path} is over {MAX_CONTRACT_BYTES // 1024} KB; a contract is a few clauses")
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_no_aliases_loader())
        except RecursionError:
            raise ContractError(f"contract {path} is nested too deeply") from None
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ContractError(f"contract {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                                f"{exc}") from None
        return cls.from_dict(data, str(path))

    def check(self, metrics: dict[str, float]) -> list[ClauseResult]:
        """Evaluate every clause; a metric that was not measured fails its clause."""
        return [ClauseResult(c, metrics.get(c.metric), c.metric in metrics and c.holds(metrics[c.metric]))
                for c in self.clauses]

    def required_eval(self, base: EvalConfig) -> EvalConfig:
        """The evaluation config that measures every metric the clauses name."""
        ppl, tasks, speed = list(base.perplexity), list(base.tasks), base.speed
        ab = (base.ab or ABConfig(**({"prompts": self.prompts} if self.prompts else {}))) if self.needs_ab else base.ab
        for c in self.clauses:
            name = c.metric.removeprefix("retained/").removeprefix("original/")
            head, _, rest = name.partition("/")
            if head in ("ppl", "kl", "agreement") and rest and rest not in ppl:
                ppl.append(rest)
            elif head in ("acc", "acc_norm") and rest:
                wanted = base.tasks or ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
                                        "openbookqa")
                for t in (wanted if rest == "average" else (rest,)):
                    if t not in tasks:
                        tasks.append(t)
            elif head in ("speed", "speedup", "memory"):
                speed = True
        return replace(base, perplexity=tuple(ppl), tasks=tuple(tasks), speed=speed, ab=ab)


def _is_suite_name(name: str) -> bool:
    from minillm_core.prompts import suite_names

    return name in suite_names()


def passed(results: list[ClauseResult]) -> bool:
    return all(r.passed for r in results)


def load_search(data: bytes | str) -> dict[str, Any]:
    """A saved search result (`SearchResult.to_dict()` JSON), checked enough to plot."""
    try:
        curve = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MiniLLMError(f"search result is not valid JSON: {exc}") from None
    if not isinstance(curve, dict) or not isinstance(curve.get("points"), list) or not all(
            isinstance(p, dict) and "ratio" in p and "passed" in p for p in curve["points"]):
        raise MiniLLMError("not a search result: expected {'points': [{'ratio', 'passed', ...}], 'best_ratio'}")
    return curve
