"""Deployable models out: ONNX (run by onnxruntime) and ``torch.export`` programs.

:func:`export_model` exports a model, runs the exported artefact on the example input and on
a second random batch of another size (the batch dimension is exported as dynamic), compares
both outputs with the PyTorch model's within ``atol + rtol * |reference|`` (the rule of
``torch.testing.assert_close``), and only then moves the file to its final name. A file that
was not checked is never left behind: the export goes to a temporary name in the target
folder, which is removed when anything fails.

Exporters used, both from torch itself (nothing here re-implements an exporter):

- ``onnx``: ``torch.onnx.export(..., dynamo=False)``, the TorchScript-tracing exporter. It
  works offline on CPU without ``onnxscript`` and is several times faster than the dynamo
  exporter on these models. Tracing records one path through the model, so a branch that
  depends on tensor values would be frozen silently; the model is therefore first run through
  ``torch.export`` (which refuses data-dependent control flow and says where), and the check
  on a second, differently sized batch catches sizes frozen into the graph.
- ``torch-export``: ``torch.export.export`` with a dynamic batch dimension, saved with
  ``torch.export.save`` (a ``.pt2`` archive). Data-dependent control flow makes
  ``torch.export`` refuse the model; the refusal is reported with its first lines.

The tolerance defaults (``atol=1e-4, rtol=1e-4``, float32) leave room for the reordered
float arithmetic of onnxruntime's fused kernels; they are stated in every error.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = ["EXPORT_FORMATS", "ExportError", "export_model"]

EXPORT_FORMATS = ("onnx", "torch-export")
SUFFIXES = {"onnx": ".onnx", "torch-export": ".pt2"}


class ExportError(ValueError):
    """A model that cannot be exported, or whose export does not reproduce its outputs."""


def _first_lines(err: BaseException, n: int = 3) -> str:
    """The gist of an exporter's error: its type and first non-empty lines."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {' '.join(lines[:n]) or 'no message'}"


def _check_args(
    model: nn.Module, example_input: torch.Tensor, fmt: str, path: Path, atol: float, rtol: float
) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if fmt not in EXPORT_FORMATS:
        raise ValueError(
            f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}"
        )
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a tensor, got {type(example_input).__name__}")
    if example_input.ndim != 4 or example_input.shape[0] < 1:
        raise ValueError(
            f"example_input must be a batch of images B x C x H x W, got shape "
            f"{tuple(example_input.shape)}"
        )
    if not example_input.is_floating_point() or not torch.isfinite(example_input).all():
        raise ValueError("example_input must hold finite floating-point values (no NaN or inf)")
    for name, tol in (("atol", atol), ("rtol", rtol)):
        if not (isinstance(tol, int | float) and tol >= 0 and tol != float("inf")):
            raise ValueError(f"{name} must be a finite number >= 0, got {tol!r}")
    if path.is_dir():
        raise IsADirectoryError(f"--out {str(path)!r} is a folder; give a file name")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder of {str(path)!r} does not exist; create it first")
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"cannot write to the folder of {str(path)!r}")


def _export_onnx(model: nn.Module, x: torch.Tensor, tmp: Path) -> Callable[[torch.Tensor], Any]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(
            "ONNX export needs onnx and onnxruntime: pip install onnx onnxruntime"
        ) from None
    _trace_program(model, x, "ONNX")  # refuses data-dependent control flow, with the reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trace warnings: the graph is checked below instead
        try:
            torch.onnx.export(
                model,
                (x,),
                str(tmp),
                dynamo=False,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
            )
        except Exception as err:  # the exporter's own refusal, reported with its reason
            raise ExportError(f"cannot export to ONNX: {_first_lines(err)}") from None
    try:
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ExportError(
            f"onnxruntime cannot load the exported model: {_first_lines(err)}"
        ) from None
    name = session.get_inputs()[0].name

    def run(inp: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: inp.numpy()})[0])

    return run


def _trace_program(model: nn.Module, x: torch.Tensor, target: str) -> Any:
    """``torch.export`` of the model with a dynamic batch; its refusal names the reason."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.export.export(model, (x,), dynamic_shapes=({0: batch},), strict=False)
        except Exception as err:  # guards on data, unsupported ops, specialised batch, ...
            kind = (
                "the model has data-dependent control flow (a branch or loop on a tensor's value); "
                if "DataDependent" in type(err).__name__
                else ""
            )
            raise ExportError(f"cannot export to {target}: {kind}{_first_lines(err)}") from None


def _export_program(model: nn.Module, x: torch.Tensor, tmp: Path) -> Callable[[torch.Tensor], Any]:
    program = _trace_program(model, x, "torch.export")
    torch.export.save(program, str(tmp))
    loaded = torch.export.load(str(tmp)).module()
    return lambda inp: loaded(inp)


def _run_checked(run: Callable[[torch.Tensor], Any], x: torch.Tensor, what: str) -> Any:
    try:
        return run(x)
    except Exception as err:  # e.g. a batch size the trace froze into a reshape or scatter
        raise ExportError(
            f"the exported model fails on {what} (a size frozen into the graph?): "
            f"{_first_lines(err, 1)}"
        ) from None


def _compare(got: Any, want: torch.Tensor, atol: float, rtol: float, what: str) -> float:
    if not isinstance(got, torch.Tensor):
        raise ExportError(
            f"the exported model returned {type(got).__name__} on {what}, not a tensor"
        )
    if got.shape != want.shape:
        raise ExportError(
            f"the exported model gives shape {tuple(got.shape)} on {what}, PyTorch "
            f"{tuple(want.shape)} (a size frozen into the graph?)"
        )
    got = got.to(want.dtype)
    err = (got - want).abs()
    bound = atol + rtol * want.abs()
    if not torch.isfinite(got).all() or (err > bound).any():
        raise ExportError(
            f"the exported model's outputs differ from PyTorch's on {what}: max abs error "
            f"{err.max().item():.3g} exceeds atol={atol:g} + rtol={rtol:g} x |reference|"
        )
    return err.max().item()


@torch.no_grad()
def export_model(
    model: nn.Module,
    example_input: torch.Tensor,
    fmt: str,
    path: str | Path,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> dict[str, Any]:
    """Export ``model`` (put in eval mode) to ``path`` as ``fmt``; check it, then write it.

    ``fmt`` is ``"onnx"`` or ``"torch-export"``. The exported model is run on
    ``example_input`` and on a random batch of a different size; each output must match
    the PyTorch model's within ``atol + rtol * |reference|``. Returns a summary: format,
    path, the largest absolute errors, the tolerances and the input shape. Raises
    :class:`ExportError` (a ``ValueError``) with the reason when the model cannot be
    exported or the export does not match; ``path`` is then not created.
    """
    path = Path(path)
    _check_args(model, example_input, fmt, path, atol, rtol)
    model = model.eval()
    x = example_input.detach().float().cpu().contiguous()
    other_batch = x.shape[0] + 1
    g = torch.Generator().manual_seed(0)
    x2 = (
        torch.randn((other_batch, *x.shape[1:]), generator=g) * x.std(correction=0).clamp(min=1e-3)
        + x.mean()
    )
    want, want2 = model(x), model(x2)
    if not isinstance(want, torch.Tensor):
        raise ExportError(
            f"the model returns {type(want).__name__} in eval mode; only models that return "
            "one tensor of logits can be exported"
        )
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp" + SUFFIXES[fmt], dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        exporter = _export_onnx if fmt == "onnx" else _export_program
        run = exporter(model, x, tmp)
        err1 = _compare(
            _run_checked(run, x, "the example input"),
            want,
            atol,
            rtol,
            f"the example input {tuple(x.shape)}",
        )
        err2 = _compare(
            _run_checked(run, x2, f"a batch of {other_batch}"),
            want2,
            atol,
            rtol,
            f"a batch of {other_batch}",
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "format": fmt,
        "path": str(path),
        "input_shape": list(x.shape),
        "dynamic_batch": True,
        "max_abs_error": max(err1, err2),
        "atol": atol,
        "rtol": rtol,
        "bytes": path.stat().st_size,
    }
