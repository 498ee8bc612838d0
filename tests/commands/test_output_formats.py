"""What the commands print: `--json` wherever a table is printed, one model-argument flag,
and accuracy as a fraction in JSON but percent in text."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from archbench.cli import build_parser, main

BUILDS_A_MODEL = {"info", "bench", "train", "compare", "explain", "pretrain"}
PRINTS_NO_TABLE = {"kan-study", "probe"}  # kan-study writes kan_study.md; probe prints JSON


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _visible_options(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


def test_json_on_every_command_that_prints_a_table():
    for name, p in _subparsers().items():
        assert ("--json" in _visible_options(p)) == (name not in PRINTS_NO_TABLE), name


def test_one_model_argument_flag():
    for name, p in _subparsers().items():
        options = _visible_options(p)
        assert ("--model-arg" in options) == (name in BUILDS_A_MODEL), name
        assert not [o for o in options if "kwarg" in o or o in ("--model-args", "--arch-arg")]


def test_model_arg_is_repeatable_and_reaches_the_model(capsys):
    argv = ["info", "resnet_pico", "--model-arg", "num_classes=7", "--model-arg", "stem_width=8"]
    assert main([*argv, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_args"] == {"num_classes": 7, "stem_width": 8}
    assert main(["info", "resnet_pico", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert info["measured"]["params"] < plain["measured"]["params"]  # narrower stem, 7 classes


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "resnet_pico", "--json"],
        ["info", "vit_pico", "--img-size", "16", "--json"],
        ["data", "{data}", "--json"],
        ["bench", "resnet_pico", "--img-size", "16", "--batch", "2", "--repeats", "2", "--json"],
    ],
    ids=lambda argv: argv[0],
)
def test_json_output_parses(argv, tiny_data, capsys):
    assert main([a.replace("{data}", tiny_data) for a in argv]) == 0
    json.loads(capsys.readouterr().out)


def test_eval_json_holds_fractions_and_text_shows_percent(run_dir, capsys):
    assert main(["eval", str(run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["top1"] <= 1 and 0 <= result["top5"] <= 1
    assert main(["eval", str(run_dir)]) == 0
    text = capsys.readouterr().out
    shown = re.search(r"top-1 ([0-9.]+)%\s+top-5 ([0-9.]+)%", text)
    assert shown, text
    assert float(shown.group(1)) == pytest.approx(100 * result["top1"], abs=0.006)
    assert float(shown.group(2)) == pytest.approx(100 * result["top5"], abs=0.006)


def test_explain_score_json(run_dir, tmp_path, capsys):
    argv = ["explain", str(run_dir), "--num-images", "2", "--score", "--json"]
    assert main([*argv, "--out", str(tmp_path / "cams")]) == 0
    report = json.loads(capsys.readouterr().out)  # stdout holds the JSON alone
    assert report["methods"] == ["gradcam"] and len(report["images"]) == 2
    assert [r["method"] for r in report["faithfulness"]][0] == "gradcam"
    assert (tmp_path / "cams" / "panel.png").is_file()
