"""skincancer: ISIC dermoscopy archives -> a benign-vs-malignant classifier with a diffable evaluation.

\b
The workflow, from the project root:
  skincancer check-params               validate params.yaml before anything runs
  skincancer run                        every stale stage (dvc repro under one Prefect server)
  skincancer run train evaluate         those stages and what they need (or: dvc repro evaluate)
  skincancer metrics                    val and test metrics with 95% intervals
  skincancer predict photos/ --output out.csv
                                        P(malignant) per image, from models/model.keras and its card
  skincancer export --format savedmodel a SavedModel taking image bytes or uint8 pixels (or tflite)
  skincancer diff-report --base main    a PR comment: params and metrics against another revision
  skincancer repin isic2019             a source changed upstream on purpose: fetch downloads and records it anew

\b
Exit codes: 0 done; 1 some images could not be classified (predict; each row says why);
2 bad input or usage (a missing or mismatched file, invalid params, an unknown choice),
nothing written; a failing stage's own code (run).
"""

from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, rich_markup_mode=None)


class ExportFormat(str, enum.Enum):
    """skincancer.serve.export.EXPORTERS' names, known here without importing TensorFlow."""

    savedmodel = "savedmodel"
    tflite = "tflite"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@app.callback()
def _quiet_native_banners() -> None:
    """Before any command imports TensorFlow: its C++ banners never reach the terminal."""
    from skincancer.ops.native_stderr import filter_native_stderr

    filter_native_stderr()


@app.command()
def sample(
    out_dir: Annotated[Path, typer.Argument(help="folder to write the archives into")],
    n_images: Annotated[int, typer.Option(help="images across both layouts")] = 1200,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write the synthetic ISIC-like sample in the ISIC 2017 (Udacity) and ISIC 2020 layouts."""
    from skincancer.ingest.sample import write_sample

    for layout, folder in write_sample(out_dir, n_images=n_images, seed=seed).items():
        typer.echo(f"{layout}: {folder}")


@app.command("check-params")
def check_params(path: Annotated[Path, typer.Argument()] = Path("params.yaml")) -> None:
    """Validate params.yaml without running anything; settings that would have no effect are warned about."""
    from skincancer.core.params import ParamsError, load_params, unused_settings

    try:
        params = load_params(path)
    except ParamsError as error:
        raise _fail(str(error)) from None
    for warning in unused_settings(params):
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"{path}: ok")


@app.command()
def repin(
    targets: Annotated[list[str], typer.Argument(
        metavar="FOLDER_OR_FILE", show_default=False,
        help="a folder under data/raw (a dataset or source name), or one <folder>/<file> as data/raw/checksums.json "
        "records it",
    )],
) -> None:
    """Forget the checksums fetch recorded for these files and delete them, so the next fetch downloads them
    again and records what it reads: for a file that changed upstream on purpose, or one recorded broken.
    A sha256 pinned in params.yaml is changed there instead."""
    from skincancer.core import paths
    from skincancer.ingest.fetch import REFETCH, FetchError, forget_pins

    try:
        forgotten = forget_pins(paths.RAW, targets)
    except FetchError as error:
        raise _fail(str(error)) from None
    for key in forgotten:
        typer.echo(f"forgot {key}")
    typer.echo(f"{len(forgotten)} file(s) forgotten; {REFETCH}")


@app.command()
def run(
    stages: Annotated[list[str] | None, typer.Argument(help="stages to bring up to date, with what they need (default: all)", show_default=False)] = None,
    force: Annotated[bool, typer.Option(help="rerun them even if up to date")] = False,
) -> None:
    """Run the pipeline flow: `dvc repro` as one Prefect run, only stale stages (`python -m flows.pipeline`)."""
    import yaml

    pipeline, dvc_yaml = Path("flows/pipeline.py"), Path("dvc.yaml")
    if not (pipeline.is_file() and dvc_yaml.is_file()):
        raise _fail(f"{pipeline} or {dvc_yaml} not found in {Path.cwd()}: run from the project root")
    known = list(yaml.safe_load(dvc_yaml.read_text())["stages"])
    if unknown := [stage for stage in stages or [] if stage not in known]:
        raise _fail(f"unknown stage(s) {unknown}; dvc.yaml has {known}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [sys.executable, "-m", "flows.pipeline", *(stages or []), *(["--force"] if force else [])]
    raise typer.Exit(subprocess.run(command, env=env).returncode)


METRIC_ROWS = ("roc_auc", "pr_auc", "sensitivity", "specificity", "precision", "f1", "balanced_accuracy", "brier")


@app.command()
def metrics(path: Annotated[Path, typer.Argument()] = Path("metrics.json")) -> None:
    """The last evaluation: val (or out-of-fold) and test side by side, with 95% intervals where it has them,
    and the threshold chosen on val (or out-of-fold)."""
    from skincancer.evaluate.summary import number, with_interval

    if not path.is_file():
        raise _fail(f"{path} not found: run the pipeline first (`skincancer run` or `dvc repro`)")
    values = json.loads(path.read_text())
    chosen_on = "oof" if "oof" in values else "val"
    typer.echo(f"threshold (chosen on {chosen_on}): {number(values['threshold'], 4)}")
    splits = [split for split in (chosen_on, "test") if values.get(split)]
    keys = [key for key in METRIC_ROWS if any(key in values[split] for split in splits)]
    keys += [key for split in splits for key, value in values[split].items()
             if key not in keys and not key.endswith(("_ci_low", "_ci_high")) and not isinstance(value, dict)]
    keys = list(dict.fromkeys(keys))
    width = max(map(len, keys), default=0)
    typer.echo(f"{'':<{width}}  " + "  ".join(f"{split:<26}" for split in splits).rstrip())
    for key in keys:
        cells = [f"{with_interval(values[split], key, 4):<26}" for split in splits]
        typer.echo(f"{key:<{width}}  " + "  ".join(cells).rstrip())


@app.command("diff-report")
def diff_report(
    base: Annotated[str, typer.Option(help="git revision to compare with (a branch, tag or commit)")] = "main",
    out: Annotated[Path, typer.Option(help="folder for report.md and its images")] = Path("diff-report"),
) -> None:
    """Params changed, every metric (old, new, delta), the paired test AUC difference and ROC/PR curves
    against BASE: a PR comment's body."""
    from skincancer.review.diff_report import BaseUnreadable, write_diff_report

    try:
        report = write_diff_report(base, Path("."), out)
    except (FileNotFoundError, BaseUnreadable) as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    typer.echo(report)


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="image files and/or folders (walked recursively)", show_default=False)],
    model: Annotated[Path, typer.Option(help="the trained classifier")] = Path("models/model.keras"),
    card: Annotated[Path | None, typer.Option(help="its evaluated card (default: card.json beside the model)", show_default=False)] = None,
    threshold: Annotated[float | None, typer.Option(min=0, max=1, help="decide at this probability instead of the card's")] = None,
    output: Annotated[Path | None, typer.Option(help="out.csv or out.json (default: CSV on stdout)")] = None,
    explain: Annotated[Path | None, typer.Option(help="folder for one Grad-CAM overlay PNG per image")] = None,
    metadata: Annotated[Path | None, typer.Option(help="patient context CSV for a model trained with it: a column image (each file's path, name or stem) and age, sex, site (or the ISIC tables' headers)", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
) -> None:
    """P(malignant) per image, prepared and calibrated as the card says (column score: the model's raw output;
    prevalence: the malignant share the probability is calibrated to), and the decision at the evaluated
    threshold; exit 1 if any image failed. A model trained with patient context takes each image's row of
    --metadata (blank cells, or no row, are scored as missing; the context column says which fields).

    \b
    skincancer predict lesion.jpg
    skincancer predict photos/ --output predictions.json --explain cams/
    skincancer predict photos/ --metadata photos/patients.csv
    """
    model_card = _read_card(model, card, evaluated=True)
    calibration = model_card.calibration
    from skincancer.serve.context import check_context, image_context
    from skincancer.serve.predict import image_files, write_predictions
    from skincancer.serve.predict import predict as classify

    files = image_files(inputs)
    if not files:
        raise _fail(f"no images found in {', '.join(map(str, inputs))}")
    try:  # the CSV is read before the model loads: a bad one fails at once
        context = image_context(files, model_card, metadata)
        classifier = _load(model)
        check_context(classifier, model_card)
    except ValueError as error:  # an unreadable CSV, one a model without context would ignore, a mismatched card
        raise _fail(str(error)) from None
    for warning in context.warnings if context else []:
        typer.echo(f"warning: {warning}", err=True)
    promise = model_card.threshold_in_words if threshold is None else "--threshold: the card's promise does not apply"
    chosen = model_card.threshold if threshold is None else threshold
    typer.echo(f"{calibration.in_words()}; malignant at p >= {chosen:.4f} ({promise})", err=True)
    frame = classify(files, classifier, model_card, context=context, threshold=threshold, batch_size=batch_size)
    if explain is not None:
        from skincancer.serve.predict import write_explanations

        write_explanations(frame, classifier, model_card, explain, context)
    text = write_predictions(frame, output)
    if text is not None:
        typer.echo(text, nl=False)
    failed = int((frame["error"] != "").sum())
    if failed:
        typer.echo(f"{failed} of {len(frame)} images could not be classified (see the error column)", err=True)
        raise typer.Exit(1)


def _read_card(model: Path, card: Path | None, *, evaluated: bool = False):
    """The model's card (default: beside it), checked against it before any work; `evaluated`: a training
    card, which has no threshold or calibration, is refused too."""
    from skincancer.core.model_card import CardError, card_path_for, read_card

    try:
        found = read_card(card or card_path_for(model), model)
        if evaluated:
            found.evaluation  # noqa: B018  (raises CardError for a training card)
    except CardError as error:
        raise _fail(str(error)) from None
    return found


def _load(model: Path):
    from skincancer.evaluate.inference import ModelUnreadable, load_for_inference

    try:
        return load_for_inference(model)
    except (FileNotFoundError, ModelUnreadable) as error:
        raise _fail(str(error)) from None


@app.command()
def export(
    format: Annotated[ExportFormat, typer.Option("--format", help="savedmodel: signatures serve (uint8) and serve_bytes (encoded images); tflite: uint8")] = ExportFormat.savedmodel,
    model: Annotated[Path, typer.Option(help="the trained classifier")] = Path("models/model.keras"),
    card: Annotated[Path | None, typer.Option(help="its card (default: card.json beside the model)", show_default=False)] = None,
    output: Annotated[Path | None, typer.Option(help="where to write (default: exports/<model_savedmodel|model.tflite>)", show_default=False)] = None,
) -> None:
    """Export for serving, in float32: returns the model's raw score (uncalibrated; the card beside the
    export holds the calibration and threshold).

    \b
    skincancer export --format savedmodel --output exports/model_savedmodel
    skincancer export --format tflite
    """
    model_card = _read_card(model, card)
    classifier = _load(model)
    from skincancer.serve.export import EXPORTERS

    exporter, default_name = EXPORTERS[format.value]
    typer.echo(exporter(classifier, model_card, output or Path("exports") / default_name))


if __name__ == "__main__":
    app()
