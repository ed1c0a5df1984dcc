"""Compare MLflow runs: the params that differ, final and best metrics, overlaid curves.

Used by ``tools/compare_runs.py``::

    comparison = compare_runs("samft", filter_string="params.loss.name = 'sam'")
    print(format_table(comparison))
    write_report(comparison, Path("outputs/compare"))

"Best" follows what each metric declares where it is defined (:func:`samft.metrics.direction`:
mIoU higher, IoU calibration error lower, losses lower, ...), never a guess from its name;
``maximize``/``minimize`` set it for metrics samft does not know.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from samft.metrics import direction
from samft.tracking import plots, store

MISSING = "-"
# A weighted total is only comparable between runs that weigh the same terms the same way.
TOTAL_LOSS = "loss/total"
WEIGHTING_PARAMS = ("weighting.", "loss.")


class CompareError(ValueError):
    """Nothing to compare (unknown experiment, no run matching the filter, ...)."""


@dataclasses.dataclass
class MetricSummary:
    """One metric of one run: last value, best value and the step of the best."""

    final: float | None
    best: float | None
    best_step: int | None


@dataclasses.dataclass
class RunSummary:
    """What the report shows of one run."""

    run_id: str
    run_name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, MetricSummary]
    history: dict[str, tuple[list[int], list[float]]]

    @property
    def label(self) -> str:
        """``name (8-char id)``: names repeat across runs, ids do not."""
        return f"{self.run_name} ({self.run_id[:8]})" if self.run_name else self.run_id[:8]


@dataclasses.dataclass
class Comparison:
    """Runs of one experiment side by side."""

    experiment: str
    filter_string: str
    tracking_uri: str
    runs: list[RunSummary]
    differing_params: list[str]
    metrics: list[str]
    directions: dict[str, str]
    notes: list[str] = dataclasses.field(default_factory=list)  # caveats printed under the table
    no_winner: set[str] = dataclasses.field(default_factory=set)  # metrics whose runs are not comparable


def metric_direction(name: str, maximize: Iterable[str] = (), minimize: Iterable[str] = ()) -> str:
    """"min", "max" or "none": which extreme of ``name`` is best.

    Explicit ``maximize``/``minimize`` lists win; otherwise the direction the metric declares
    (:func:`samft.metrics.direction`). A metric that declares none (a setting, a count, or a
    key samft does not know) is "none": only its final value is shown.
    """
    if name in set(maximize):
        return "max"
    if name in set(minimize):
        return "min"
    return {"higher": "max", "lower": "min"}.get(direction(name) or "", "none")


def scale_notes(metrics: Sequence[str], differing: Sequence[str]) -> tuple[list[str], set[str]]:
    """Caveats for metrics whose values are on different scales across the compared runs.

    Returns:
        (notes, metrics that get no best-run mark): ``loss/total`` when the runs' loss or
        weighting params differ, since a total weighted 20:1:1 and one weighted by learned
        uncertainties are different sums.
    """
    causes = [k for k in differing if k.startswith(WEIGHTING_PARAMS)]
    if TOTAL_LOSS not in metrics or not causes:
        return [], set()
    shown = ", ".join(causes[:4]) + (f" and {len(causes) - 4} more" if len(causes) > 4 else "")
    note = (f"{TOTAL_LOSS} is not comparable across these runs: their loss weighting differs ({shown}), "
            f"so the totals are different weighted sums on different scales. No best run is marked; "
            f"compare val/ metrics or the unweighted terms loss/<term> instead.")
    return [note], {TOTAL_LOSS}


def differing_params(param_sets: Sequence[dict[str, str]]) -> list[str]:
    """Sorted keys whose value is not the same in every run (a key missing in a run differs)."""
    keys = set().union(*param_sets) if param_sets else set()
    return sorted(k for k in keys if len({p.get(k, None) for p in param_sets}) > 1)


def summarize(steps: Sequence[int], values: Sequence[float], direction: str) -> MetricSummary:
    """Final value (at the largest step) and best value (ignoring NaN) of one history.

    ``direction`` "none" gives no best.
    """
    if not values:
        return MetricSummary(None, None, None)
    order = sorted(range(len(steps)), key=lambda i: steps[i])
    final = values[order[-1]]
    finite = [i for i in order if not math.isnan(values[i])]
    if not finite or direction == "none":
        return MetricSummary(final, None, None)
    pick = min if direction == "min" else max
    best_i = pick(finite, key=lambda i: values[i])
    return MetricSummary(final, values[best_i], steps[best_i])


def compare_runs(
    experiment: str,
    *,
    filter_string: str = "",
    tracking_uri: str | None = None,
    metrics: Sequence[str] | None = None,
    max_runs: int = 100,
    maximize: Iterable[str] = (),
    minimize: Iterable[str] = (),
    project_root: Path | None = None,
) -> Comparison:
    """Fetch the runs of ``experiment`` matching ``filter_string`` and summarise them.

    Args:
        experiment: Experiment name.
        filter_string: MLflow search syntax, e.g. ``"params.loss.name = 'sam'"``; a dotted
            param key needs backticks only when it contains spaces or dashes.
        tracking_uri: Store URI; None resolves like the Tracker (``$MLFLOW_TRACKING_URI``,
            else ``sqlite:///<project_root>/mlflow.db``).
        metrics: Metric keys to report; None: every metric of the runs except ``system/*``.
        max_runs: Newest runs kept.
        maximize, minimize: Metric names whose direction overrides the name-based guess.
        project_root: Directory of the embedded store (default: the current directory).

    Raises:
        CompareError: Unknown experiment, or no run matches.
    """
    from mlflow.tracking import MlflowClient

    uri = store.resolve_tracking_uri(tracking_uri, project_root or Path.cwd())
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in client.search_experiments()]
        close = difflib.get_close_matches(experiment, names, n=3)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise CompareError(f"No experiment {experiment!r} in {uri}.{hint} Known: {names}.")
    try:
        runs = client.search_runs([found.experiment_id], filter_string=filter_string,
                                  max_results=max_runs, order_by=["attributes.start_time DESC"])
    except Exception as err:  # MlflowException for a malformed filter
        raise CompareError(
            f"MLflow rejected filter {filter_string!r}: {err}. Example of the syntax: "
            f"\"params.loss.name = 'sam' and metrics.`val/iou` > 0.5\".") from err
    if not runs:
        raise CompareError(
            f"No run of experiment {experiment!r} in {uri} matches filter {filter_string!r}.")
    runs = list(reversed(runs))  # oldest first reads like a history
    keys = list(metrics) if metrics else sorted(
        {k for r in runs for k in r.data.metrics if not k.startswith("system/")})
    directions = {k: metric_direction(k, maximize, minimize) for k in keys}
    summaries = [_summarize_run(client, run, keys, directions) for run in runs]
    differing = differing_params([s.params for s in summaries])
    notes, no_winner = scale_notes(keys, differing)
    return Comparison(experiment, filter_string, uri, summaries, differing, keys, directions, notes, no_winner)


def _summarize_run(client: Any, run: Any, keys: Sequence[str],
                   directions: dict[str, str]) -> RunSummary:
    history, summary = {}, {}
    for key in keys:
        if key not in run.data.metrics:
            summary[key] = MetricSummary(None, None, None)
            continue
        points = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        steps, values = [m.step for m in points], [m.value for m in points]
        history[key] = (steps, values)
        summary[key] = summarize(steps, values, directions[key])
    return RunSummary(run.info.run_id, run.info.run_name or "", run.info.status,
                      dict(run.data.params), summary, history)


def _fmt(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.4g}"


def table_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table: one column per run, one row per field.

    Each metric has a "final" row and, unless its direction is "none", a "best" row in
    which the best run is marked with ``*``.
    """
    header = ["", *[run.label for run in comparison.runs]]
    rows = [["status", *[run.status for run in comparison.runs]]]
    for key in comparison.differing_params:
        rows.append([f"params.{key}", *[r.params.get(key, MISSING) for r in comparison.runs]])
    for key in comparison.metrics:
        direction = comparison.directions[key]
        bests = [r.metrics[key].best for r in comparison.runs]
        finite = [b for b in bests if b is not None]
        winner = (min if direction == "min" else max)(finite) if finite and key not in comparison.no_winner else None
        rows.append([f"{key} final", *[_fmt(r.metrics[key].final) for r in comparison.runs]])
        if direction == "none":
            continue
        best_cells = []
        for run, best in zip(comparison.runs, bests):
            cell = MISSING if best is None else f"{_fmt(best)} @{run.metrics[key].best_step}"
            best_cells.append(cell + (" *" if best is not None and best == winner else ""))
        rows.append([f"{key} best ({direction})", *best_cells])
    return header, rows


def format_table(comparison: Comparison) -> str:
    """The comparison table as aligned plain text."""
    header, rows = table_rows(comparison)
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [f"note: {note}" for note in comparison.notes]
    return "\n".join(lines)


def to_markdown(comparison: Comparison, curve_files: dict[str, str] | None = None) -> str:
    """A markdown report: what was compared, the table, and links to the curve images."""
    header, rows = table_rows(comparison)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    parts = [
        f"# Run comparison: {comparison.experiment}",
        "",
        f"- tracking URI: `{comparison.tracking_uri}`",
        f"- filter: `{comparison.filter_string or '(none)'}`",
        f"- runs: {len(comparison.runs)}; params that differ: "
        f"{len(comparison.differing_params)}; `*` marks the best run of a metric",
        "",
        line(header),
        line(["---"] * len(header)),
        *[line(r) for r in rows],
    ]
    if comparison.notes:
        parts += ["", *[f"> Note: {note}" for note in comparison.notes]]
    if curve_files:
        parts += ["", "## Curves", ""]
        parts += [f"![{key}]({name})" for key, name in curve_files.items()]
    return "\n".join(parts) + "\n"


def write_csv(comparison: Comparison, path: Path) -> Path:
    """One row per run: ids, status, differing params, final/best/best_step of each metric."""
    fields = ["run_id", "run_name", "status",
              *[f"params.{k}" for k in comparison.differing_params]]
    for key in comparison.metrics:
        fields += [f"{key}.final", f"{key}.best", f"{key}.best_step"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        for run in comparison.runs:
            row: dict[str, Any] = {"run_id": run.run_id, "run_name": run.run_name,
                                   "status": run.status}
            row.update({f"params.{k}": run.params.get(k, "") for k in comparison.differing_params})
            for key in comparison.metrics:
                m = run.metrics[key]
                row.update({f"{key}.final": m.final, f"{key}.best": m.best,
                            f"{key}.best_step": m.best_step})
            writer.writerow(row)
    return path


def write_report(comparison: Comparison, out_dir: Path) -> dict[str, Path]:
    """Write ``report.md``, ``runs.csv`` and ``curves/<metric>.png`` (runs overlaid) to out_dir.

    Returns:
        ``{"markdown": ..., "csv": ..., "<metric>": png path, ...}``.
    """
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    curve_files: dict[str, str] = {}
    for key in comparison.metrics:
        series = {r.label: r.history[key] for r in comparison.runs if key in r.history}
        if not series:
            continue
        direction = comparison.directions[key]
        title = key if direction == "none" else f"{key} ({direction} is best)"
        fig = plots.curves_figure(title, series, ylabel=key)
        name = f"curves/{plots.metric_file_name(key)}"
        written[key] = plots.save_figure(fig, out_dir / name)
        curve_files[key] = name
    written["csv"] = write_csv(comparison, out_dir / "runs.csv")
    markdown = out_dir / "report.md"
    markdown.write_text(to_markdown(comparison, curve_files), encoding="utf-8")
    written["markdown"] = markdown
    return written
