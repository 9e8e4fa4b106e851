"""Bad input to the commands for one's own model ends in one line on stderr that names the
value and the fix, and exit code 2 (argparse's own errors: its usage and exit code 2); a check
that fails is exit code 1; ``--debug`` shows the traceback; a closed stdout is no traceback."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import neuronsplit as ns
from neuronsplit.cli import build_parser, main
from neuronsplit.errors import MissingFileError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A scan of the demo CNN (2 batches of digits), a saved split of it, and broken files."""
    tmp = tmp_path_factory.mktemp("cli_errors")
    scan = tmp / "demo.safetensors"
    assert main(["scan", "--model", "demo", "--layers", "fc2", "--out", str(scan),
                 "--max-batches", "2", "--batch-size", "64", "--no-progress"]) == 0  # fmt: skip
    split = tmp / "split"
    assert main(["split", "--scan", str(scan), "--gamma", "1", "--top", "1", "--out", str(split),
                 "--no-progress"]) == 0  # fmt: skip
    (tmp / "garbage.safetensors").write_bytes(b"not a checkpoint at all")
    (tmp / "garbage.pth").write_bytes(b"\x80\x04not a pickle")
    (tmp / "a_file.txt").write_text("x")
    (tmp / "empty").mkdir()
    (tmp / "no_images" / "cat").mkdir(parents=True)
    (tmp / "no_plan").mkdir()
    (tmp / "bad_image" / "cat").mkdir(parents=True)
    (tmp / "bad_image" / "cat" / "0.png").write_text("not a png")
    for name in ("a", "b", "c"):  # 3 classes for a 2-class model
        (tmp / "three" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp / "three" / name / "0.png")
    (tmp / "weights_folder.pth").mkdir()
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp / "tiny.pth")
    return {"tmp": tmp, "scan": scan, "split": split}


def _argv(files: dict[str, Path], argv: str) -> list[str]:
    """``argv`` with ``{tmp}``, ``{scan}`` and ``{split}`` filled in."""
    return argv.format(**{k: str(v) for k, v in files.items()}).split()


# (argv, what the one-line message must say)
USER_ERRORS = [
    # the model
    ("scan --model resnet19 --data {tmp} --layers fc", "did you mean resnet18"),
    ("scan --model torchvision:resnet1 --data {tmp} --layers fc", "torchvision knows no model 'resnet1'; did you mean"),
    ("scan --model no_such_model_xyz_abc --data {tmp} --layers fc", "list the names with timm.list_models()"),
    ("scan --model {tmp}/garbage.pth --layers fc", "is a file; --model takes the architecture"),
    ("scan --model demo --num-classes 3 --layers fc2", "--weights and --num-classes apply to timm / torchvision models, not to 'demo'"),
    ("scan --model demo --image-size 16 --layers fc2", "takes 8x8 images; leave --image-size out"),
    ("scan --model torchvision:resnet18 --weights {tmp}/missing.pth --data {tmp} --layers fc", "'{tmp}/missing.pth' does not exist"),
    ("scan --model torchvision:resnet18 --weights {tmp}/weights_folder.pth --data {tmp} --layers fc", "is a folder; give the path of a file"),
    ("scan --model torchvision:resnet18 --weights {tmp}/garbage.pth --data {tmp} --layers fc", "is not a readable checkpoint"),
    ("scan --model torchvision:resnet18 --weights {tmp}/garbage.safetensors --data {tmp} --layers fc", "is not a readable checkpoint"),
    ("scan --model test_resnet --weights {tmp}/garbage.safetensors --data {tmp} --layers fc", "is not a readable checkpoint"),
    ("scan --model torchvision:resnet18 --weights {tmp}/tiny.pth --data {tmp} --layers fc", "does not fit --model 'resnet18'"),
    # the data
    ("scan --model test_resnet --layers fc", "needs images of its own: give --data DIR"),
    ("scan --model test_resnet --data digits --layers fc", "'digits' fits the demo models only"),
    ("scan --model demo --data {tmp}/missing --layers fc2", "'{tmp}/missing' does not exist"),
    ("scan --model demo --data {tmp}/empty --layers fc2", "holds no usable ImageFolder tree"),
    ("scan --model demo --data {tmp}/no_images --layers fc2", "put the images (.png, .jpg, ...) in one sub-folder per class"),
    ("scan --model demo --data {tmp}/a_file.txt --layers fc2", "is a file; give a folder"),
    ("scan --model demo --data {tmp}/bad_image --layers fc2 --no-progress", "cannot identify image file"),
    ("scan --model torchvision:resnet18 --num-classes 2 --data {tmp}/three --layers fc --no-progress", "label 2 in batch 0 is outside [0, 2)"),
    # scan options
    ("scan --model demo --layers fc9", "fc9"),
    ("scan --model demo --layers fc2 --relevance epsilonplusflatt", "did you mean EpsilonPlusFlat"),
    ("scan --model demo --layers fc2 --relevance EpsilonGammaBox", "EpsilonGammaBox needs arguments"),
    ("scan --model demo --layers fc2 --out {tmp}", "is a folder; give a file name"),
    # detect
    ("detect --scan {tmp}/missing.safetensors", "'{tmp}/missing.safetensors' does not exist"),
    ("detect --scan {tmp}/garbage.safetensors", "garbage.safetensors"),
    ("detect --scan {scan} --tau 0.04", "--tau 0.04 is not on the tau grid of '{scan}' (0.01 0.02 0.03 0.05 0.1); pick one of them, or scan again with --tau-grid 0.01 0.02 0.03 0.04 0.05 0.1"),
    ("detect --scan {scan} --gamma -0.5", "--gamma -0.5 finds nothing: a pair needs an ARV cosine in [0, gamma)"),
    ("detect --scan {scan} --layers fc1", "fc1"),
    # split
    ("split --out {tmp}/o", "give --scan FILE (from neuronsplit scan), or --unsupervised"),
    ("split --scan {scan} --out {tmp}/a_file.txt", "is a file; give a directory"),
    ("split --scan {scan} --gamma 0.001 --out {tmp}/o", "no polysemantic units to split in '{scan}'"),
    ("split --scan {scan} --num-classes 3 --out {tmp}/o", "--num-classes without --model"),
    ("split --unsupervised --scan {scan} --layers fc2 --model demo --out {tmp}/o", "leave --scan out"),
    ("split --unsupervised --model demo --out {tmp}/o", "--unsupervised needs --model and --layers"),
    # verify
    ("verify --split {tmp}/missing", "is no directory"),
    ("verify --split {tmp}/no_plan", "has no plan.json"),
    ("verify --split {split} --model demo-vit", "parameter shapes differ from the given DigitsViT"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), USER_ERRORS, ids=[a for a, _ in USER_ERRORS])
def test_user_errors_are_one_line_with_exit_code_2(
    argv: str, message: str, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(_argv(files, argv)) == 2
    captured = capsys.readouterr()
    command = argv.split()[0]
    err = captured.err
    assert err.startswith(f"neuronsplit {command}: error: ") and err.count("\n") == 1, err
    assert message.format(**{k: str(v) for k, v in files.items()}) in err, err
    assert not (files["tmp"] / "o").exists()


BAD_OPTIONS = [
    ("scan --model demo --layers fc2 --batch-size 0", "argument --batch-size: 0 is not >= 1"),
    ("scan --model demo --layers fc2 --max-batches -1", "argument --max-batches: -1 is not >= 1"),
    ("scan --model demo --layers fc2 --top-n -1", "argument --top-n: -1 is not >= 0"),
    ("scan --model demo --layers fc2 --tau-grid 0", r"argument --tau-grid: 0.0 is not in (0, 1]"),
    ("scan --model demo --layers fc2 --target logit", "argument --target: invalid choice: 'logit'"),
    ("scan --layers fc2", "the following arguments are required: --model"),
    ("detect --scan s --tau 1.5", r"argument --tau: 1.5 is not in (0, 1]"),
    ("detect --scan s --p 0", r"argument --p: 0.0 is not in (0, 1]"),
    ("detect --scan s --gamma 2", "argument --gamma: 2.0 is not in [-1, 1]"),
    ("detect --scan s --rows 0", "argument --rows: 0 is not >= 1"),
    ("split --scan s --out o --top 0", "argument --top: 0 is not >= 1"),
    ("split --scan s --out o --top -1", "argument --top: -1 is not >= 1"),
    ("split --scan s --out o --rho 1.5", "argument --rho: 1.5 is not in (0, 1]"),
    ("split --scan s --out o --max-images 0", "argument --max-images: 0 is not >= 1"),
    ("split --scan s --out o --merge sum", "argument --merge: invalid choice: 'sum'"),
    ("split --scan s --out o --verify-batches 0", "argument --verify-batches: 0 is not >= 1"),
    ("split --scan s --out o --max-concepts 1", "argument --max-concepts: 1 is not >= 2"),
    ("split --scan s --out o --min-silhouette 2", "argument --min-silhouette: 2.0 is not in [-1, 1]"),
    ("verify --split d --verify-batches x", "argument --verify-batches: 'x' is not an integer"),
    ("verify --split d --num-classes 0", "argument --num-classes: 0 is not >= 1"),
    ("demo --tau 0.04", "argument --tau: 0.04 is not on the demo scan's tau grid; pick one of 0.01, 0.02, 0.03, 0.05, 0.1"),
    ("demo --gamma 0", r"argument --gamma: 0 finds nothing: a pair needs an ARV cosine in [0, gamma)"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), BAD_OPTIONS, ids=[a for a, _ in BAD_OPTIONS])
def test_options_out_of_range_stop_argparse_with_exit_code_2(
    argv: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv.split())
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_a_failed_check_is_exit_code_1(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A saved split whose subunit rows no longer add up to the unit loads, runs and fails
    the check: exit code 1, the worst comparison on stderr."""
    split = files["split"]
    plan = ns.SplitPlan.load(split / "plan.json")
    assert len(plan) == 1
    # corrupt the split: scale a subunit row, so the sum of subunits is no longer the unit
    from safetensors.torch import load_file, save_file

    weights = load_file(str(split / "weights.safetensors"))
    from safetensors import safe_open

    with safe_open(str(split / "weights.safetensors"), "pt") as f:
        metadata = f.metadata()
    broken = files["tmp"] / "broken"
    broken.mkdir()
    for name in ("plan.json", "plan.safetensors"):
        (broken / name).write_bytes((split / name).read_bytes())
    key = next(k for k in weights if k.startswith("fc2.") and "weight" in k and weights[k].dim())
    weights[key] = weights[key] * 1.5
    save_file(weights, str(broken / "weights.safetensors"), metadata=metadata)
    capsys.readouterr()
    code = main(["verify", "--split", str(broken)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "is NOT equivalent to 'demo'" in err and "Traceback" not in err


def test_debug_shows_the_traceback(files: dict[str, Path]) -> None:
    with pytest.raises(MissingFileError, match="missing.safetensors"):
        main(["--debug", "detect", "--scan", str(files["tmp"] / "missing.safetensors")])


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"neuronsplit {ns.__version__}"


def test_every_option_of_every_command_has_help() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("scan", "detect", "split", "verify", "discover", "steer", "demo"):
        for action in subparsers.choices[name]._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
    for action in parser._actions:
        assert action.help, action.dest


def _process(argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "neuronsplit.cli", *argv], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "codes"),
    [
        (["--help"], (0,)),  # argparse itself drops what it cannot write, and exits 0
        (["detect", "--scan", "{scan}", "--gamma", "1"], (141,)),
    ],
)
def test_a_closed_stdout_is_no_traceback(
    argv: list[str], codes: tuple[int, ...], files: dict[str, Path]
) -> None:
    """``neuronsplit ... | head``: the reader is gone before the command writes."""
    proc = _process([a.format(scan=files["scan"]) for a in argv])
    proc.stdout.close()  # type: ignore[union-attr]
    err = proc.stderr.read()  # type: ignore[union-attr]
    assert proc.wait(timeout=300) in codes, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_run_command_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    from neuronsplit.cli_models import run_command

    def fails(args: Any) -> int:
        raise PermissionError(13, "Permission denied", "/x/y")

    assert run_command("scan", fails, argparse.Namespace()) == 2
    assert capsys.readouterr().err == (
        "neuronsplit scan: error: cannot use '/x/y': Permission denied; check the path and its "
        "permissions\n"
    )
    with pytest.raises(PermissionError):
        run_command("scan", fails, argparse.Namespace(debug=True))

    def bug(args: Any) -> int:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):  # not a user error: the traceback stays
        run_command("scan", bug, argparse.Namespace())
