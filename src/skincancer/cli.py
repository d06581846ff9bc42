"""`skincancer` command line: the library's entry points that make sense outside dvc repro."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def _quiet_native_banners() -> None:
    """Before any command imports TensorFlow: its C++ banners never reach the terminal."""
    from skincancer.native_stderr import filter_native_stderr

    filter_native_stderr()


@app.command()
def sample(
    out_dir: Annotated[Path, typer.Argument(help="folder to write the archives into")],
    n_images: Annotated[int, typer.Option(help="images across both layouts")] = 1200,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write the synthetic ISIC-like sample in the ISIC 2017 (Udacity) and ISIC 2020 layouts."""
    from skincancer.sample import write_sample

    for layout, folder in write_sample(out_dir, n_images=n_images, seed=seed).items():
        typer.echo(f"{layout}: {folder}")


@app.command("check-params")
def check_params(path: Annotated[Path, typer.Argument()] = Path("params.yaml")) -> None:
    """Validate params.yaml without running anything."""
    from skincancer.params import ParamsError, load_params

    try:
        load_params(path)
    except ParamsError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{path}: ok")


@app.command()
def metrics(path: Annotated[Path, typer.Argument()] = Path("metrics.json")) -> None:
    """Print the test metrics of the last evaluation (and its validation-chosen threshold)."""
    if not path.is_file():
        typer.echo(f"{path} not found: run the pipeline first (`dvc repro`)", err=True)
        raise typer.Exit(2)
    values = json.loads(path.read_text())
    typer.echo(f"threshold (chosen on val): {values['threshold']:.4f}")
    width = max(map(len, values["test"]))
    for key, value in values["test"].items():
        shown = f"{value:.4f}" if isinstance(value, float) else "n/a (undefined)" if value is None else value
        typer.echo(f"test {key:<{width}}  {shown}")


@app.command("diff-report")
def diff_report(
    base: Annotated[str, typer.Option(help="git revision to compare with (a branch, tag or commit)")] = "main",
    out: Annotated[Path, typer.Option(help="folder for report.md and its images")] = Path("diff-report"),
) -> None:
    """Params changed, every metric (old, new, delta), the paired test AUC difference and ROC/PR curves
    against BASE: a PR comment's body."""
    from skincancer.diff_report import BaseUnreadable, write_diff_report

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
    metrics: Annotated[Path, typer.Option(help="metrics.json holding the evaluated threshold")] = Path("metrics.json"),
    threshold: Annotated[float | None, typer.Option(min=0, max=1, help="decide at this probability instead")] = None,
    output: Annotated[Path | None, typer.Option(help="out.csv or out.json (default: CSV on stdout)")] = None,
    params: Annotated[Path, typer.Option(help="params.yaml: shard resize/quality and evaluate.tta(_scales), as trained")] = Path("params.yaml"),
    explain: Annotated[Path | None, typer.Option(help="folder for one Grad-CAM overlay PNG per image")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
) -> None:
    """P(malignant) per image, calibrated as evaluated (column score: the model's raw output; prevalence:
    the malignant share the probability is calibrated to), and the decision at the evaluated threshold;
    exit 1 if any image failed."""
    from skincancer.params import Params, ParamsError, load_params
    from skincancer.predict import NoThreshold, decision_threshold, image_files, load_model, read_calibration, write_predictions
    from skincancer.predict import predict as classify

    try:
        chosen = decision_threshold(metrics, threshold)
        settings = load_params(params) if params.is_file() else Params()
        classifier = load_model(model)
    except (NoThreshold, ParamsError, FileNotFoundError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    files = image_files(inputs)
    if not files:
        typer.echo(f"error: no images found in {', '.join(map(str, inputs))}", err=True)
        raise typer.Exit(2)
    calibration = read_calibration(metrics)
    typer.echo(f"{calibration.in_words()}; malignant at p >= {chosen:.4f}", err=True)
    frame = classify(files, classifier, chosen, settings.shard, calibration=calibration,
                     tta=settings.evaluate.tta, tta_scales=settings.evaluate.tta_scales, batch_size=batch_size)
    if explain is not None:
        from skincancer.predict import write_explanations

        write_explanations(frame, classifier, settings.shard, explain)
    text = write_predictions(frame, output)
    if text is not None:
        typer.echo(text, nl=False)
    failed = int((frame["error"] != "").sum())
    if failed:
        typer.echo(f"{failed} of {len(frame)} images could not be classified (see the error column)", err=True)
        raise typer.Exit(1)


@app.command()
def export(
    format: Annotated[str, typer.Option("--format", help="savedmodel | tflite")] = "savedmodel",
    model: Annotated[Path, typer.Option(help="the trained classifier")] = Path("models/model.keras"),
    output: Annotated[Path | None, typer.Option(help="where to write (default: exports/<model_savedmodel|model.tflite>)")] = None,
) -> None:
    """Export for serving: takes raw uint8 RGB images at the model's size, returns its raw score (uncalibrated)."""
    from skincancer.export import EXPORTERS
    from skincancer.predict import load_model

    if format not in EXPORTERS:
        typer.echo(f"error: unknown --format {format!r}; known: {sorted(EXPORTERS)}", err=True)
        raise typer.Exit(2)
    try:
        classifier = load_model(model)
    except FileNotFoundError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    exporter, default_name = EXPORTERS[format]
    typer.echo(exporter(classifier, output or Path("exports") / default_name))


if __name__ == "__main__":
    app()
