"""Bad input to every sub-command: exit status 2, one line on stderr, never a traceback.

The sub-commands are read from the CLI's own parser, so a new sub-command without cases
here fails ``test_every_subcommand_has_bad_input_cases``. Cases run in-process through
``archbench.cli.main`` (fast); two run as real processes to prove the exit path. No case
trains or measures anything: each must fail at the door.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from archbench.cli import build_parser, main

TINY = "shapes:n_train=16,n_val=8,n_test=8,img_size=16,num_classes=4"  # as tiny_data


def on_tiny(*extra: str, models: tuple[str, ...] = ("resnet_pico",), data: str = TINY) -> list[str]:
    """Arguments of a train or compare run of ``models`` on ``data`` into {out}, plus ``extra``."""
    return [*models, "--data", data, *extra, "--out", "{out}"]


# Each case: (id, arguments after the sub-command, regex the error line must match).
# Placeholders: {tmp} an empty folder, {file} an existing text file (not a folder, not an
# image, not YAML), {run} a run folder holding a resnet_pico checkpoint for TINY (the
# `run_dir` fixture of conftest.py), {out} an output folder that must not be created.
CASES: dict[str, list[tuple[str, list[str], str]]] = {
    "models": [
        ("unknown kind", ["--kind", "nosuchkind"], r"unknown --kind 'nosuchkind'.*cnn"),
        ("unknown family", ["--family", "nosuchfamily"], r"unknown --family.*resnet"),
        ("unknown scale", ["--scale", "huge"], r"unknown --scale 'huge'.*canonical"),
        ("pattern matching nothing", ["zzz_no_such_model"], r"no registered model"),
        ("filters matching nothing", ["--family", "resnet", "--kind", "vit"], r"no registered"),
    ],
    "info": [
        ("misspelt model", ["resnet_picoo"], r"unknown model 'resnet_picoo'.*resnet_pico"),
        ("zero size", ["resnet_pico", "--img-size", "0"], r"--img-size.*>= 1"),
        ("negative size", ["resnet_pico", "--img-size", "-5"], r"--img-size.*>= 1"),
        ("size not a number", ["resnet_pico", "--img-size", "big"], r"--img-size.*'big'"),
        ("size a ViT cannot tile", ["vit_pico", "--img-size", "15"], r"nearest valid"),
        ("malformed --model-arg", ["resnet_pico", "--model-arg", "depth"], r"KEY=VALUE"),
        ("empty --model-arg key", ["resnet_pico", "--model-arg", "=3"], r"KEY=VALUE"),
        ("unknown --model-arg key", ["resnet_pico", "--model-arg", "nosuch=1"], r"'nosuch'"),
        (
            "--model-arg for another model",
            ["resnet_pico", "--model-arg", "vit_pico:depth=2"],
            r"not among the models",
        ),
    ],
    "bench": [
        ("misspelt model", ["resnet_pico", "vit_picoo"], r"unknown model 'vit_picoo'"),
        ("negative size", ["resnet_pico", "--img-size", "-5"], r"--img-size.*>= 1"),
        ("zero batch", ["resnet_pico", "--batch", "0"], r"--batch.*>= 1"),
        ("zero threads", ["resnet_pico", "--threads", "0"], r"--threads.*>= 1"),
        ("zero repeats", ["resnet_pico", "--repeats", "0"], r"--repeats.*>= 1"),
        ("--int8 without --optimized", ["resnet_pico", "--int8"], r"pass --optimized too"),
        (
            "--onednn-linear without --train",
            ["resnet_pico", "--onednn-linear"],
            r"pass --train too",
        ),
        ("malformed --model-arg", ["resnet_pico", "--model-arg", "=3"], r"KEY=VALUE"),
        ("unknown --model-arg key", ["resnet_pico", "--model-arg", "nosuch=1"], r"'nosuch'"),
        (
            "--out in a missing folder",
            ["resnet_pico", "--out", "{tmp}/missing/bench.json"],
            r"does not exist",
        ),
    ],
    "data": [
        ("unknown dataset", ["nosuchdata"], r"unknown dataset 'nosuchdata'.*shapes"),
        ("missing folder", ["folder:{tmp}/missing"], r"does not exist"),
        ("option without value", ["shapes:n_train"], r"key=value"),
        ("unknown option", ["shapes:nosuchkey=1"], r"unknown option 'nosuchkey'"),
        ("negative size", ["shapes:n_train=-5"], r">= 0"),
        ("option not a number", ["shapes:n_train=abc"], r"n_train"),
        ("image size too small", ["shapes:img_size=0"], r"img_size"),
        ("empty spec", [""], r"non-empty"),
        ("not an npz file", ["npz:{file}"], r"cannot read"),
        ("shard not a tar file", ["shards:{file}"], r"is not a tar file"),
        ("pack without --out", ["pack", "{tmp}"], r"give a folder and --out"),
        ("negative seed", ["shapes", "--seed", "-1"], r"--seed.*>= 0"),
    ],
    "eval": [
        ("missing run folder", ["{tmp}/missing"], r"does not exist"),
        ("folder that is not a run", ["{tmp}"], r"no checkpoint"),
        ("file that is not a checkpoint", ["{run}/model.json"], r"not a readable"),
        ("unknown split", ["{run}", "--split", "holdout"], r"--split.*'holdout'"),
        ("unknown checkpoint choice", ["{run}", "--which", "first"], r"--which"),
        ("zero batch", ["{run}", "--batch-size", "0"], r"--batch-size.*>= 1"),
        ("negative seed", ["{run}", "--seed", "-2"], r"--seed.*>= 0"),
        ("unknown dataset", ["{run}", "--data", "nosuchdata"], r"unknown dataset"),
        (
            "data with other classes",
            ["{run}", "--data", TINY.replace("num_classes=4", "num_classes=7")],
            r"num_classes=4.*7 classes",
        ),
    ],
    "explain": [
        ("missing absolute path", ["/no/such/run"], r"'/no/such/run' does not exist"),
        ("missing relative path", ["runs/nosuch"], r"'runs/nosuch' does not exist"),
        ("misspelt model", ["resnet_picoo"], r"unknown model 'resnet_picoo'"),
        ("neither run nor model", ["myrun"], r"no run folder 'myrun'.*unknown model"),
        ("missing checkpoint file", ["best.safetensors"], r"'best.safetensors' does not exist"),
        ("nothing to explain", ["resnet_pico"], r"nothing to explain"),
        ("unknown method", ["resnet_pico", "--method", "gradcam", "nosuchcam"], r"nosuchcam"),
        ("missing image", ["resnet_pico", "--images", "{tmp}/missing.png"], r"does not exist"),
        ("file that is not an image", ["resnet_pico", "--images", "{file}"], r"as an image"),
        ("zero images", ["resnet_pico", "--num-images", "0"], r"--num-images.*>= 1"),
        ("negative target", ["resnet_pico", "--target", "-1"], r"--target.*>= 0"),
        ("target not a class", ["{run}", "--target", "9"], r"--target 9.*0\.\.3"),
        ("unknown layer", ["{run}", "--layer", "no.such.layer"], r"no\.such\.layer"),
        ("--model-arg with a run", ["{run}", "--model-arg", "depth=3"], r"model name"),
        ("malformed --model-arg", ["resnet_pico", "--model-arg", "depth"], r"KEY=VALUE"),
        ("unknown --model-arg key", ["resnet_pico", "--model-arg", "nosuch=1"], r"'nosuch'"),
        ("unknown dataset", ["{run}", "--data", "nosuchdata"], r"unknown dataset"),
    ],
    "train": [
        ("misspelt model", on_tiny(models=("resnet_picoo",)), r"resnet_pico"),
        ("pickled --pretrained", on_tiny("--pretrained", "{tmp}/w.pth"), r"never unpickles"),
        ("missing --pretrained", on_tiny("--pretrained", "{tmp}/w.safetensors"), r"not found"),
        (
            "--pretrained not safetensors",
            on_tiny("--pretrained", "{file}"),
            r"not a readable safetensors file",
        ),
        ("zero epochs", on_tiny("--epochs", "0"), r"--epochs"),
        ("negative epochs", on_tiny("--epochs", "-3"), r"--epochs"),
        ("zero batch", on_tiny("--batch-size", "0"), r"--batch-size"),
        ("negative lr", on_tiny("--lr", "-1"), r"--lr"),
        ("negative seed", on_tiny("--seed", "-1"), r"--seed"),
        ("zero time budget", on_tiny("--max-seconds", "0"), r"--max-seconds"),
        ("zero threads", on_tiny("--threads", "0"), r"--threads"),
        ("GPU that is not there", on_tiny("--device", "cuda:99"), r"device cuda:99 was asked"),
        ("unknown device", on_tiny("--device", "tpu"), r"unknown device 'tpu'.*auto"),
        ("fp16 on the CPU", on_tiny("--set", "precision=fp16"), r"fp16 needs --device cuda"),
        ("unknown recipe", on_tiny("--recipe", "nosuchrecipe"), r"unknown recipe.*cpu-fast"),
        ("missing recipe file", on_tiny("--recipe", "{tmp}/r.yaml"), r"does not exist"),
        ("malformed --set", on_tiny("--set", "warmup"), r"--set.*KEY=VALUE"),
        ("unknown --set key", on_tiny("--set", "nosuchkey=1"), r"unknown recipe key"),
        ("bad --set value", on_tiny("--set", "epochs=-1"), r"epochs"),
        ("malformed --model-arg", on_tiny("--model-arg", "depth"), r"KEY=VALUE"),
        ("unknown --model-arg key", on_tiny("--model-arg", "nosuch=1"), r"'nosuch'"),
        ("unknown dataset", on_tiny(data="nosuchdata"), r"unknown dataset"),
        ("missing data folder", on_tiny(data="folder:{tmp}/missing"), r"does not exist"),
        (
            "size a ViT cannot tile",
            on_tiny(models=("vit_pico",), data=TINY.replace("img_size=16", "img_size=18")),
            r"nearest valid",
        ),
        ("--out is a file", ["resnet_pico", "--data", TINY, "--out", "{file}"], r"not a folder"),
        ("no --data", ["resnet_pico", "--out", "{out}"], r"required.*--data"),
    ],
    "distill": [
        (
            "unknown method",
            [
                "--teacher",
                "resnet_pico",
                "--student",
                "vit_pico",
                "--method",
                "kdd",
                "--data",
                TINY,
                "--out",
                "{out}",
            ],
            r"unknown task 'kdd'",
        ),
        (
            "misspelt teacher",
            [
                "--teacher",
                "resnet_picoo",
                "--student",
                "vit_pico",
                "--method",
                "kd",
                "--data",
                TINY,
                "--out",
                "{out}",
            ],
            r"resnet_pico",
        ),
        (
            "method that cannot train the student",
            [
                "--teacher",
                "resnet_pico",
                "--student",
                "resnet_pico",
                "--method",
                "deit",
                "--data",
                TINY,
                "--out",
                "{out}",
            ],
            r"student resnet_pico with deit: .*distillation head",
        ),
        (
            "unknown method argument",
            [
                "--teacher",
                "resnet_pico",
                "--student",
                "vit_pico",
                "--method",
                "kd",
                "--method-arg",
                "kd:temprature=2",
                "--data",
                TINY,
                "--out",
                "{out}",
            ],
            r"temprature.*accepted: teacher, temperature",
        ),
        (
            "method argument for another method",
            [
                "--teacher",
                "resnet_pico",
                "--student",
                "vit_pico",
                "--method",
                "kd",
                "--method-arg",
                "deit:tau=2",
                "--data",
                TINY,
                "--out",
                "{out}",
            ],
            r"METHOD:KEY=VALUE with METHOD one of kd",
        ),
        (
            "missing teacher folder",
            [
                "--teacher",
                "/no/such/run",
                "--student",
                "vit_pico",
                "--method",
                "kd",
                "--data",
                TINY,
                "--out",
                "{out}",
            ],
            r"no/such/run",
        ),
    ],
    "pretrain": [
        (
            "unknown method",
            on_tiny("--method", "simclrr"),
            r"unknown --method 'simclrr'.*simclr_v2",
        ),
        (
            "method that needs labels",
            on_tiny("--method", "simclr_v2_finetune"),
            r"needs labels and pretrain gives it none.*archbench train",
        ),
        (
            "backbone the method cannot use",
            on_tiny("--method", "swav", models=("mixer_pico",)),
            r"swav's small crops are 8x8.*small_size",
        ),
        (
            "unknown method argument",
            on_tiny("--method", "simclr_v2", "--method-arg", "temprature=0.2"),
            r"temprature.*accepted: temperature",
        ),
        (
            "bad method argument value",
            on_tiny("--method", "simclr_v2", "--method-arg", "temperature=-1"),
            r"temperature must be > 0",
        ),
        ("misspelt model", on_tiny("--method", "rotnet", models=("resnet_picoo",)), r"resnet_pico"),
    ],
    "probe": [
        ("missing run", ["{tmp}/no/run"], r"does not exist.*archbench pretrain"),
        ("folder without an encoder", ["{tmp}"], r"no checkpoint.*no pretrained encoder"),
        ("supervised run", ["{run}"], r"task 'classification', not a self-supervised method"),
        ("unknown kind", ["{run}", "--kind", "svm"], r"invalid choice: 'svm'"),
        ("bad weight decays", ["{run}", "--weight-decays", "a,b"], r"comma-separated numbers"),
        ("zero k", ["{run}", "--ks", "0,5"], r"integers >= 1"),
    ],
    "compare": [
        ("no model", on_tiny(models=()), r"at least one MODEL"),
        ("misspelt model", on_tiny(models=("resnet_pico", "vit_picoo")), r"vit_picoo"),
        ("model twice", on_tiny(models=("resnet_pico", "resnet_pico")), r"twice"),
        ("malformed --pretrained", on_tiny("--pretrained", "w.safetensors"), r"MODEL=FILE"),
        (
            "--pretrained for another model",
            on_tiny("--pretrained", "vit_pico={file}"),
            r"pretrained names models not in the comparison",
        ),
        ("pickled --pretrained", on_tiny("--pretrained", "resnet_pico={tmp}/w.bin"), r"unpickles"),
        ("zero epochs", on_tiny("--epochs", "0"), r"--epochs"),
        ("zero seeds", on_tiny("--seeds", "0"), r"--seeds"),
        ("zero jobs", on_tiny("--jobs", "0"), r"--jobs"),
        ("unknown budget", on_tiny("--budget", "money=3"), r"unknown budget"),
        ("budget not a number", on_tiny("--budget", "flops=lots"), r"'lots'"),
        ("zero epoch budget", on_tiny("--budget", "epochs=0"), r"epochs"),
        ("budget matched to unknown", on_tiny("--budget", "params=match:nosuch"), r"'nosuch'"),
        ("budget nobody can meet", on_tiny("--budget", "params=100"), r"cannot be met"),
        ("unknown recipe", on_tiny("--recipe", "nosuchrecipe"), r"unknown recipe"),
        ("unknown dataset", on_tiny(data="nosuchdata"), r"unknown dataset"),
        ("missing spec file", ["--spec", "{tmp}/spec.yaml"], r"neither a file nor a preset"),
        ("spec file that is not a mapping", ["--spec", "{file}"], r"mapping"),
        ("malformed --model-arg", on_tiny("--model-arg", "depth"), r"KEY=VALUE"),
        ("unknown --model-arg key", on_tiny("--model-arg", "nosuch=1"), r"'nosuch'"),
        ("--model-arg for another model", on_tiny("--model-arg", "vit_pico:depth=2"), r"not among"),
        ("the old --model-kwargs", on_tiny("--model-kwargs", "{}"), r"--model-arg"),
        ("--out is a file", ["resnet_pico", "--data", TINY, "--out", "{file}"], r"not a folder"),
        ("unknown executor", on_tiny("--executor", "dask"), r"invalid choice: 'dask'"),
        ("ray address, local executor", on_tiny("--ray-address", "h:1"), r"add --executor ray"),
        (
            "a Ray address that does not answer",
            on_tiny("--executor", "ray", "--ray-address", "127.0.0.1:9"),
            r"no Ray cluster answers at 127.0.0.1:9.*ray start --head",
        ),
        ("unknown --tune key", on_tiny("--tune", "lrate"), r"'lrate' is not a recipe key"),
        ("--trials without --tune", on_tiny("--trials", "3"), r"add --tune"),
    ],
    "main": [
        ("zero epochs", ["--epochs", "0", "--out", "{out}"], r"--epochs.*>= 1"),
        ("epochs not a number", ["--epochs", "five", "--out", "{out}"], r"--epochs.*'five'"),
        ("zero seeds", ["--seeds", "0", "--out", "{out}"], r"--seeds.*>= 1"),
        ("zero jobs", ["--jobs", "0", "--out", "{out}"], r"--jobs.*>= 1"),
    ],
    "kan-study": [
        ("unknown part", ["--task", "nosuchpart", "--out", "{out}"], r"--task.*'nosuchpart'"),
        ("zero seeds", ["--seeds", "0", "--out", "{out}"], r"--seeds.*>= 1"),
        ("negative epochs", ["--epochs", "-2", "--out", "{out}"], r"--epochs.*>= 1"),
        ("zero jobs", ["--jobs", "0", "--out", "{out}"], r"--jobs.*>= 1"),
        ("no --out", ["--task", "symbolic"], r"required.*--out"),
    ],
    "compress": [
        (
            "ratio above 1",
            ["{run}", "--method", "structured", "--arg", "ratio=1.5", "--out", "{out}"],
            r"ratio must lie in \(0, 1\).*got 1.5",
        ),
        (
            "ratio 0",
            ["{run}", "--method", "structured", "--arg", "ratio=0", "--out", "{out}"],
            r"ratio must lie in \(0, 1\)",
        ),
        (
            "misspelt method",
            ["{run}", "--method", "structurd", "--out", "{out}"],
            r"unknown compression method 'structurd'.*structured",
        ),
        (
            "unknown argument",
            ["{run}", "--method", "structured", "--arg", "nosuch=1", "--out", "{out}"],
            r"no argument\(s\) nosuch; accepted: ratio",
        ),
        (
            "scheme without a kernel",
            ["{run}", "--method", "pt2e_int8", "--arg", "scheme=int4", "--out", "{out}"],
            r"unknown quantization scheme 'int4'.*fake",
        ),
        (
            "calibration of the wrong shape",
            [
                "{run}",
                "--method",
                "pt2e_int8",
                "--data",
                TINY.replace("img_size=16", "img_size=8"),
                "--out",
                "{out}",
            ],
            r"calibration images are 3x8x8.*takes 3x16x16.*img_size=16",
        ),
        (
            "a layer to ignore that does not exist",
            ["{run}", "--method", "structured", "--arg", "ignore=nosuch", "--out", "{out}"],
            r"ignore names module\(s\) nosuch",
        ),
        ("no run folder", ["{tmp}", "--method", "structured", "--out", "{out}"], r"no checkpoint"),
    ],
    "export": [
        ("unknown format", ["{run}", "--format", "tflite", "--out", "{out}"], r"'tflite'.*onnx"),
        ("missing run", ["{tmp}/norun", "--format", "onnx", "--out", "{out}"], r"does not exist"),
        ("folder without a run", ["{tmp}", "--format", "onnx", "--out", "{out}"], r"no checkpoint"),
        (
            "out in a missing folder",
            ["{run}", "--format", "onnx", "--out", "{tmp}/missing/m.onnx"],
            r"folder .*missing.* does not exist",
        ),
        ("out is a folder", ["{run}", "--format", "onnx", "--out", "{tmp}"], r"is a folder"),
        (
            "negative atol",
            ["{run}", "--format", "onnx", "--atol", "-1", "--out", "{out}"],
            r"--atol",
        ),
    ],
}

# The task options of `archbench train` and `archbench compare`.
TASK_CASES: list[tuple[str, str, list[str], str]] = [
    ("train", "unknown task", on_tiny("--task", "nosuchtask"), r"nosuchtask"),
    ("train", "malformed --task-arg", on_tiny("--task-arg", "temperature"), r"KEY=VALUE"),
    ("train", "unknown --task-arg key", on_tiny("--task-arg", "nosuchkey=1"), r"nosuchkey"),
    ("compare", "unknown task", on_tiny("--task", "nosuchtask"), r"nosuchtask"),
    ("compare", "malformed --task-arg", on_tiny("--task-arg", "temperature"), r"KEY=VALUE"),
    ("compare", "unknown --task-arg key", on_tiny("--task-arg", "nosuchkey=1"), r"nosuchkey"),
]


def _subcommands() -> set[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("the archbench parser has no sub-commands")


@pytest.fixture(autouse=True)
def _plain_errors(monkeypatch, tmp_path):
    monkeypatch.delenv("ARCHBENCH_DEBUG", raising=False)  # it turns errors into tracebacks
    monkeypatch.chdir(tmp_path)  # relative paths in the cases stay out of the checkout


def _fill(args: list[str], tmp: Path, run: Path) -> tuple[list[str], Path]:
    (tmp / "notes.txt").write_text("not an image, not a folder, not a mapping\n")
    out = tmp / "out"
    values = {
        "{tmp}": str(tmp),
        "{file}": str(tmp / "notes.txt"),
        "{run}": str(run),
        "{out}": str(out),
    }
    filled = []
    for a in args:
        for key, value in values.items():
            a = a.replace(key, value)
        filled.append(a)
    return filled, out


def _check_one_line_error(command: str, rc: int, out: str, err: str, pattern: str) -> str:
    assert "Traceback" not in out + err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith(f"archbench {command}: error: "), line
    assert "unrecognized arguments" not in line, line  # the case itself is mistyped
    assert re.search(pattern, line, flags=re.IGNORECASE), f"{pattern!r} not in {line!r}"
    return line


def _run_case(command: str, args: list[str], pattern: str, tmp: Path, run: Path, capsys) -> None:
    argv, out_dir = _fill(args, tmp, run)
    capsys.readouterr()
    rc = main([command, *argv])
    captured = capsys.readouterr()
    _check_one_line_error(command, rc, captured.out, captured.err, pattern)
    assert not out_dir.exists(), "a command that failed at the door left an output folder"


def test_every_subcommand_has_bad_input_cases(tiny_data):
    assert _subcommands() == set(CASES)
    assert TINY == tiny_data  # the run_dir fixture was written for this data
    assert all(len(cases) >= 4 for cases in CASES.values())


@pytest.mark.parametrize(
    ("command", "args", "pattern"),
    [
        pytest.param(command, args, pattern, id=f"{command}: {name}")
        for command, cases in CASES.items()
        for name, args, pattern in cases
    ],
)
def test_bad_input_is_one_line_and_status_2(command, args, pattern, tmp_path, run_dir, capsys):
    _run_case(command, args, pattern, tmp_path, run_dir, capsys)


@pytest.mark.parametrize(
    ("command", "args", "pattern"),
    [
        pytest.param(command, args, pattern, id=f"{command}: {name}")
        for command, name, args, pattern in TASK_CASES
    ],
)
def test_bad_task_options(command, args, pattern, tmp_path, run_dir, capsys):
    _run_case(command, args, pattern, tmp_path, run_dir, capsys)


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        ([], r"required.*COMMAND"),
        (["nosuchcommand"], r"invalid choice: 'nosuchcommand'"),
        (["--nosuch-option", "models"], r"unrecognized arguments: --nosuch-option"),
    ],
)
def test_bad_command_line_before_any_subcommand(argv, pattern, capsys):
    rc = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("archbench: error: ")
    assert re.search(pattern, lines[0]), lines[0]


def test_model_arg_values_and_targets():
    from archbench.commands._common import model_args_for

    got = model_args_for(
        ["depth=4", "layers=[2,2]", "attn_layer=se", "vit_pico:depth=6", "vit_pico:qkv_bias=false"],
        ["resnet_pico", "vit_pico"],
    )
    assert got["resnet_pico"] == {"depth": 4, "layers": [2, 2], "attn_layer": "se"}
    assert got["vit_pico"] == {"depth": 6, "layers": [2, 2], "attn_layer": "se", "qkv_bias": False}
    with pytest.raises(ValueError, match="given twice"):
        model_args_for(["depth=4", "depth=5"], ["resnet_pico"])


def test_real_processes_exit_2_with_one_line(tmp_path):
    """The console path: a fresh interpreter, its exit status and its stderr."""
    env = {k: v for k, v in os.environ.items() if k != "ARCHBENCH_DEBUG"}
    cases = [
        ("bench", ["resnet_pico", "--img-size", "-5"], r"--img-size.*>= 1"),
        ("explain", [str(tmp_path / "no" / "run")], r"does not exist"),
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "archbench.cli", command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for command, args, _ in cases
    ]
    for (command, _, pattern), proc in zip(cases, procs):
        out, err = proc.communicate(timeout=120)
        _check_one_line_error(command, proc.returncode, out, err, pattern)
