"""What a run does: `RunSpec` composes the pruning plan, the re-fit, the evaluation and the optional LoRA recovery.

`to_dict`/`from_dict` round-trip JSON (`spec.json`); `from_dict` also reads the flat `JobSpec` layout of older runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from minillm_core.calibration import CalibrationConfig
from minillm_core.errors import MiniLLMError
from minillm_core.evaluation.ab import ABConfig
from minillm_core.evaluation.speed import SpeedConfig
from minillm_core.evaluation.suite import PPL_DATASETS, EvalConfig
from minillm_core.evaluation.tasks import ALL_TASKS
from minillm_core.planning import PruningPlan
from minillm_core.reconstruction import ReconstructConfig
from minillm_core.recovery import RecoveryConfig

__all__ = ["ALL_TASKS", "EVALUATE_RECOVERED", "LLAMACPP_STEP", "LOAD_STEP", "PPL_DATASETS", "RECOVER_STEP",
           "SPEC_FORMAT", "RunSpec", "eval_config"]

SPEC_FORMAT = "minillm.runspec/2"  # spec.json without a "format" key is the flat JobSpec layout (version 1)
#: A run's speed measurement: fewer repeats and tokens than the CLI default, so a dashboard run stays quick.
RUN_SPEED = SpeedConfig(repeats=3, new_tokens=16)
#: The steps of a run besides `workflow.steps_of`'s, as the Run page shows them.
LOAD_STEP, RECOVER_STEP, EVALUATE_RECOVERED = "load model", "recover with LoRA", "evaluate recovered"
LLAMACPP_STEP = "measure in llama.cpp"
_OLD_EVAL_KEYS = ("perplexity", "tasks", "limit", "seq_len", "measure_speed", "data_dir")


def eval_config(perplexity: tuple[str, ...] = ("wikitext2",), tasks: tuple[str, ...] = (), limit: int | None = 16,
                seq_len: int = 128, measure_speed: bool | None = None, data_dir: str | None = None,
                prompts: str | None = None) -> EvalConfig:
    """The evaluation of a run from the Run page's settings (`limit`: windows per benchmark and items per task;
    `prompts`: an A/B prompt suite both models answer, compared prompt by prompt, with default settings).

    `measure_speed` defaults to on with CUDA and off on a CPU, where PyTorch timings of a few repeats on a shared
    machine were noise (a pruned model measured "slower"); llama.cpp's interleaved measurement is the CPU option.
    KL and agreement are measured on the perplexity windows (at most 16), not on more than the run evaluates.
    """
    if isinstance(limit, bool):
        raise MiniLLMError(f"limit must be None (everything) or an integer >= 1, got {limit!r}")
    if measure_speed is None:
        import torch

        measure_speed = torch.cuda.is_available()
    ab = ABConfig(prompts=prompts) if prompts else None
    windows = min(limit, EvalConfig.compare_windows) if isinstance(limit, int) and limit >= 1 else \
        EvalConfig.compare_windows  # a bad limit is EvalConfig's to refuse
    return EvalConfig(perplexity=tuple(perplexity), seq_len=seq_len, tasks=tuple(tasks), limit=limit, ab=ab,
                      speed=measure_speed, speed_config=RUN_SPEED, data_dir=data_dir, compare_windows=windows)


@dataclass(frozen=True)
class RunSpec:
    """Prune `model` with `plan`, save it, evaluate it (and the original when `evaluate_original`), then optionally
    LoRA-tune the pruned model with `recovery` and evaluate it the same way. Validated on construction."""

    model: str
    plan: PruningPlan
    evaluation: EvalConfig = field(default_factory=eval_config)
    recovery: RecoveryConfig | None = None
    reconstruct: ReconstructConfig | None = None  # re-fit the kept weights after pruning (None: no re-fit)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)  # the re-fit's calibration rows
    evaluate_original: bool = True
    llamacpp: bool = False  # also export both models to GGUF (q8_0) and measure them in llama.cpp
    dtype: str = "auto"
    device: str = "auto"
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, kind in (("plan", PruningPlan), ("evaluation", EvalConfig)):
            if not isinstance(getattr(self, name), kind):
                raise MiniLLMError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        if self.recovery is not None and not isinstance(self.recovery, RecoveryConfig):
            raise MiniLLMError(f"recovery must be a RecoveryConfig or None, got {type(self.recovery).__name__}")
        if self.reconstruct is not None and not isinstance(self.reconstruct, ReconstructConfig):
            kind = type(self.reconstruct).__name__
            raise MiniLLMError(f"reconstruct must be a ReconstructConfig or None, got {kind}")
        if not isinstance(self.calibration, CalibrationConfig):
            raise MiniLLMError(f"calibration must be a CalibrationConfig, got {type(self.calibration).__name__}")
        seq_len, limit = self.evaluation.seq_len, self.evaluation.limit
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
            raise MiniLLMError(f"seq_len must be an integer >= 2, got {seq_len!r}")
        if isinstance(limit, bool):
            raise MiniLLMError(f"limit must be None (everything) or an integer >= 1, got {limit!r}")

    @property
    def reconstructs(self) -> bool:
        return self.reconstruct is not None and self.reconstruct.enabled

    @property
    def label(self) -> str:
        """The name, else "<scorer> <ratio>" ("flap 20%")."""
        return self.name or f"{self.plan.scorer} {self.plan.config.ratio:.0%}"

    def steps(self) -> list[str]:
        """The step names the worker reports, in order."""
        from minillm_core.workflow import steps_of

        steps = [LOAD_STEP, *steps_of(self.evaluate_original, reconstruct=self.reconstructs)]
        steps += [LLAMACPP_STEP] if self.llamacpp else []
        return steps + ([RECOVER_STEP, EVALUATE_RECOVERED] if self.recovery is not None else [])

    def to_dict(self) -> dict[str, Any]:
        return {"format": SPEC_FORMAT, "model": self.model, "plan": self.plan.to_dict(),
                "evaluation": self.evaluation.to_dict(),
                "recovery": None if self.recovery is None else asdict(self.recovery),
                "reconstruct": None if self.reconstruct is None else asdict(self.reconstruct),
                "calibration": asdict(self.calibration),
                "evaluate_original": self.evaluate_original, "llamacpp": self.llamacpp, "dtype": self.dtype,
                "device": self.device,
                "name": self.name, "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """A spec from `to_dict`'s JSON, or from the flat JobSpec layout that runs written before version 2 have."""
        if not isinstance(data, dict):
            raise MiniLLMError("a run spec must be a JSON object")
        data = dict(data)
        version = data.pop("format", None)
        if version is None:
            data = _from_job_spec(data)
        elif version != SPEC_FORMAT:
            raise MiniLLMError(f"unsupported run spec format {version!r}; this version reads {SPEC_FORMAT}")
        else:
            data["evaluation"] = EvalConfig.from_dict(data.get("evaluation") or {})
            data["recovery"] = _recovery(data.get("recovery"))
            data["reconstruct"] = _config(ReconstructConfig, data.get("reconstruct"), "reconstruction")
            data["calibration"] = _config(CalibrationConfig, data.get("calibration") or {}, "calibration")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise MiniLLMError(f"malformed run spec: unknown field(s) {unknown}")
        if not isinstance(data.get("plan"), PruningPlan):
            data["plan"] = PruningPlan.from_dict(data.get("plan") or {})
        try:
            return cls(**data)
        except TypeError as exc:
            raise MiniLLMError(f"malformed run spec: {exc}") from None


def _config(cls: type, settings: dict[str, Any] | None, what: str) -> Any:
    if settings is None:
        return None
    if not isinstance(settings, dict):
        raise MiniLLMError(f"bad {what} settings: expected a JSON object, got {type(settings).__name__}")
    try:
        return cls(**settings)
    except TypeError as exc:
        raise MiniLLMError(f"bad {what} settings: {exc}") from None


def _recovery(settings: dict[str, Any] | None, data_dir: str | None = None) -> RecoveryConfig | None:
    if settings is None:
        return None
    try:
        return RecoveryConfig(**{"data_dir": data_dir, **settings})
    except TypeError as exc:
        raise MiniLLMError(f"bad recovery settings: {exc}") from None


def _from_job_spec(data: dict[str, Any]) -> dict[str, Any]:
    """The flat JobSpec fields (perplexity, tasks, limit, seq_len, measure_speed, data_dir; recovery as a dict of
    `RecoveryConfig` fields that inherits `data_dir`) mapped onto the RunSpec fields."""
    old = {k: data.pop(k) for k in _OLD_EVAL_KEYS if k in data}
    data["evaluation"] = eval_config(**old)
    data["recovery"] = _recovery(data.get("recovery"), old.get("data_dir"))
    return data
