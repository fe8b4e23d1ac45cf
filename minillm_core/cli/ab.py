"""`minillm ab` and `minillm suites`: A/B testing of responses over a prompt suite, and what suites/templates ship.

The pruned model (`--model`) answers the same prompts as its original (`--compare-to`); results go to JSON and CSV.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from minillm_core import workflow
from minillm_core.cli.app import Bar, DataDirOpt, JsonOpt, app, emit, load, user_errors
from minillm_core.cli.options import config_command
from minillm_core.outputs import check_output_file
from minillm_core.runs.files import write_json, write_text
from minillm_core.workflow import ABConfig, LoadConfig

SHOWN_CHARS = 160  # a response longer than this is cut in the terminal view (the files keep it whole)


def _cut(text: str) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 1] + "…"


def _render(payload: dict[str, Any], worst: list[dict[str, Any]]) -> None:
    c = payload["comparison"]
    typer.echo(f"A/B on suite {payload['suite']} ({payload['n_prompts']} prompts, "
               f"{payload['config']['max_new_tokens']} new tokens, "
               f"{'sampled' if payload['config']['sample'] else 'greedy'}) in {payload['seconds']:.1f} s")
    for key, meaning in workflow.AB_METRICS.items():
        typer.echo(f"  {key:<14} {c[f'ab/{key}']:>8.3f}   {meaning}")
    for which in ("original", "pruned"):
        if payload[which]:
            typer.echo(f"  {which:<9} reference match {payload[which]['ab/ref_match']:.1%}, "
                       f"ROUGE-L vs reference {payload[which]['ab/ref_rougeL']:.3f}")
    for r in worst:
        where = "same" if r["first_divergence"] is None else f"token {r['first_divergence']}"
        typer.echo(f"\n[{r['id']}] agreement {r['agreement']:.2f}, KL {r['kl']:.3f}, diverges at {where}\n"
                   f"  prompt:   {_cut(r['prompt'])}\n  original: {_cut(r['original'])}\n"
                   f"  pruned:   {_cut(r['pruned'])}")


@app.command("ab")
@config_command
def ab_cmd(
    load_config: LoadConfig,
    ab: ABConfig,
    compare_to: Annotated[str, typer.Option(help="The original model (name, path or Hub id) the pruned model is "
                                                 "tested against.")] = "smollm2-135m",
    data_dir: DataDirOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write the whole result (every prompt, both responses, every "
                                                  "metric; schema minillm.ab/1) to this JSON file.")] = None,
    csv: Annotated[Path | None, typer.Option(help="Write one row per prompt to this CSV file.")] = None,
    show: Annotated[int, typer.Option(help="Print the N prompts where the models differ most.", min=0)] = 5,
    as_json: JsonOpt = False,
) -> None:
    """A/B-test responses: every prompt of a suite through the original and the pruned model (same settings),
    compared prompt by prompt: exact match, first divergence, token agreement, KL, ROUGE-L, chrF, references."""
    import dataclasses

    with user_errors():
        out = None if out is None else check_output_file(out, "--out")
        csv = None if csv is None else check_output_file(csv, "--csv")
        suite = workflow.load_suite(ab.prompts, ab.limit, data_dir)  # a bad file fails before any model loads
        pruned = load(load_config)
        original = load(dataclasses.replace(load_config, model=compare_to))
        with Bar(not as_json) as bar:
            result = workflow.ab_test(original, pruned, suite, ab, progress=bar)
        payload = result.to_dict()
        if out is not None:
            write_json(out, payload)
        if csv is not None:
            write_text(csv, result.to_csv())
        worst = [payload["records"][result.records.index(r)] for r in result.worst(show)]
        emit(as_json, payload, lambda: _render(payload, worst))


@app.command("suites")
def suites_cmd(as_json: JsonOpt = False) -> None:
    """List the bundled prompt suites (for `ab --prompts`) and contract templates (for `check --contract`)."""
    payload = {"prompt_suites": workflow.describe_suites(), "contract_templates": workflow.contract_templates(),
               "file_formats": "a .jsonl file ({'prompt': ..., 'reference': ..., 'tag': ...} or {'messages': [...]}"
                               " per line), a .csv file (columns prompt, reference, tag, id) or a .txt file (one "
                               "prompt per line)"}
    emit(as_json, payload, lambda: typer.echo(
        "Prompt suites (minillm ab --prompts NAME):\n"
        + "\n".join(f"  {k:<13} {v}" for k, v in payload["prompt_suites"].items())
        + f"\n  or a file: {payload['file_formats']}\n\nContract templates (minillm check --contract NAME):\n"
        + "\n".join(f"  {k:<15} {v}" for k, v in payload["contract_templates"].items())))
