"""`minillm export`: write a pruned (or dense) model in a deployment format, today GGUF for llama.cpp.

Options come from `GGUFConfig`; the work is `workflow.export_gguf`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from minillm_core import workflow
from minillm_core.cli.app import JsonOpt, app, emit, load, stderr, user_errors
from minillm_core.cli.options import Only, config_command
from minillm_core.errors import MiniLLMError
from minillm_core.gguf_export import check_output_file
from minillm_core.workflow import GGUFConfig, LoadConfig

FORMATS = ("gguf",)


@app.command()
@config_command
def export(
    out: Annotated[Path, typer.Option(help="The file to write, e.g. model.gguf (written atomically).")],
    load_config: Annotated[LoadConfig, Only("model")],
    gguf: GGUFConfig,
    fmt: Annotated[str, typer.Option("--format", help=f"Output format. Allowed: {', '.join(FORMATS)}.")] = "gguf",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file at --out.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a pruned or dense LLaMA-family model as GGUF for llama.cpp: per-layer widths as llama.cpp's `deci`
    graph, uniform ones as `llama`; f32/f16, or q8_0/q4_0 quantized with the gguf package's quantizers."""
    with user_errors():
        if fmt not in FORMATS:
            raise MiniLLMError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
        check_output_file(out, overwrite)  # before minutes of loading, not after
        loaded = load(dataclasses.replace(load_config, dtype="float32", device="cpu"))
        result = workflow.export_gguf(loaded, out, gguf, overwrite=overwrite)
        stderr(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, llama.cpp arch {result.arch}, "
               f"{gguf.dtype}; tokenizer from {result.tokenizer_source})")
        emit(as_json, result.to_dict(), lambda: typer.echo(
            "\n".join(f"{k:>17}: {v}" for k, v in result.to_dict().items())))
