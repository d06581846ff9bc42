"""`skincancer` command line: the library's entry points that make sense outside dvc repro."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


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
    """Params changed, every metric (old, new, delta) and ROC/PR curves against BASE: a PR comment's body."""
    from skincancer.diff_report import BaseUnreadable, write_diff_report

    try:
        report = write_diff_report(base, Path("."), out)
    except (FileNotFoundError, BaseUnreadable) as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    typer.echo(report)


if __name__ == "__main__":
    app()
