"""`cifarq report`'s output: PNG figures (matplotlib, Agg) and one self-contained HTML page.

The data comes from the database (shared.results.load_report_data), except the test images of
the sample grid, which come from the client's own copy of the data set (`test_batch` under
CIFARQ_DATA_DIR) when it has one; otherwise the grid is left out with a note. matplotlib and
numpy are imported inside the functions, not with this module: the client needs them only when
it draws a report (the `report` extra).
"""
from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from pathlib import Path
from typing import Any

from shared.provenance import provenance_rows
from shared.results import ReportData

# Figure sizes in inches at DPI: the PNGs are exactly these many pixels (no tight bbox cropping).
DPI = 100
FIGURES = {
    "curves": (10, 4),  # loss and test accuracy per epoch
    "confusion": (7, 6),  # confusion matrix heat map
    "per_class": (8, 4),  # per-class accuracy bars
    "samples": (8, 5),  # the first test images, true and predicted labels
}
GRID_COLUMNS = 8


# -- the test images --------------------------------------------------------------------------

def load_test_images(data_dir: Path, samples: list[dict[str, int]]):
    """The samples' images as uint8 (n, 32, 32, 3), or (None, why not).

    Reads cifar-10-batches-py/test_batch, or that member of cifar-10-python.tar.gz beside it. The
    labels stored with the samples must match the file's: a different data set gives no grid.
    """
    from shared.cifar_files import DataError, read_test_batch

    if not samples:
        return None, "the job recorded no sample predictions"
    try:
        data, labels = read_test_batch(data_dir)
    except DataError as exc:  # absent, damaged or foreign: the report goes on without the grid
        if str(exc).startswith("no CIFAR-10 test set"):
            return None, f"{exc} (set CIFARQ_DATA_DIR to show the test images)"
        return None, f"could not read the CIFAR-10 test set under {data_dir}: {exc}"
    indices = [s["index"] for s in samples]
    if max(indices) >= len(data) or any(int(labels[s["index"]]) != s["label"] for s in samples):
        return None, f"the test set under {data_dir} is not the one the job was evaluated on (labels differ)"
    return data[indices].transpose(0, 2, 3, 1), None


# -- the figures --------------------------------------------------------------------------------

def _figure(name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.figure(figsize=FIGURES[name], dpi=DPI, layout="constrained")


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


def plot_curves(data: ReportData) -> bytes:
    """Left: the running loss at every logged step (the tutorial's lines) and each epoch's mean.
    Right: the test accuracy of every evaluated checkpoint; one alone is a labelled point with
    how to get more, not a "curve" of one dot."""
    fig = _figure("curves")
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = [m["epoch"] for m in data.epochs]
    if data.logged_loss:
        every = data.job["params"].get("log_every")
        loss_ax.plot(*zip(*data.logged_loss), color="tab:blue", linewidth=1.2, marker="." if len(data.logged_loss) < 60 else None,
                     label=f"running loss (every {every} mini-batches)" if every else "running loss")
    loss_ax.plot(epochs, [m["loss"] for m in data.epochs], "o", color="tab:orange", label="mean of the epoch")
    loss_ax.set(title="Training loss", xlabel="epoch", ylabel="loss")
    loss_ax.legend(fontsize=8)
    points = data.accuracy_by_epoch
    acc_ax.plot(list(points), [100 * v for v in points.values()], marker="o", color="tab:green")
    acc_ax.set(title="Test accuracy", xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100))
    if len(points) == 1:
        ((epoch, value),) = points.items()
        acc_ax.annotate(f"{100 * value:.1f}% after epoch {epoch}", (epoch, 100 * value), textcoords="offset points",
                        xytext=(0, 10), ha="center")
        acc_ax.text(0.5, 0.04, f"one evaluation; for a curve: cifarq submit evaluate --checkpoint {data.job['id'][:8]}:E",
                    transform=acc_ax.transAxes, ha="center", fontsize=7, color="0.4")
    last = max(epochs + list(points) + [1])
    loss_ax.set_xlim(0, last + 0.1)
    acc_ax.set_xlim(0.5, last + 0.5)
    for ax in (loss_ax, acc_ax):
        ax.set_xticks(range(0 if ax is loss_ax else 1, last + 1))
        ax.grid(alpha=0.3)
    return _png(fig)


def plot_confusion(data: ReportData) -> bytes:
    import numpy as np

    names = [row["class"] for row in data.result["per_class"]]
    matrix = np.array(data.result["confusion_matrix"])
    fig = _figure("confusion")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, label="test images")
    ax.set(title="Confusion matrix", xlabel="predicted class", ylabel="true class",
           xticks=range(len(names)), yticks=range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticklabels(names)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                color="white" if count > threshold else "black")
    return _png(fig)


def plot_per_class(data: ReportData) -> bytes:
    rows = data.result["per_class"]
    fig = _figure("per_class")
    ax = fig.subplots()
    values = [100 * row["accuracy"] for row in rows]
    bars = ax.bar([row["class"] for row in rows], values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=8)
    ax.axhline(100 * data.result["accuracy"], color="tab:red", linestyle="--")
    ax.set(title=f"Accuracy per class (dashed: overall {100 * data.result['accuracy']:.1f}%)",
           ylabel="accuracy (%)", ylim=(0, 105))
    ax.tick_params(axis="x", rotation=45)
    return _png(fig)


def plot_samples(data: ReportData, images) -> bytes:
    names = [row["class"] for row in data.result["per_class"]]
    samples = data.result["samples"]
    rows = -(-len(samples) // GRID_COLUMNS)
    fig = _figure("samples")
    axes = fig.subplots(rows, GRID_COLUMNS, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, sample, image in zip(axes.flat, samples, images):
        ax.imshow(image, interpolation="nearest")
        right = sample["label"] == sample["predicted"]
        ax.set_title(f"{names[sample['label']]}\n→ {names[sample['predicted']]}", fontsize=7,
                     color="tab:green" if right else "tab:red")
    fig.suptitle("First test images: true class → predicted (green right, red wrong)", fontsize=9)
    return _png(fig)


# -- the page -----------------------------------------------------------------------------------

def render_report(data: ReportData, out_dir: Path, data_dir: Path) -> dict[str, Any]:
    """Writes the PNGs and index.html under out_dir; returns what it wrote and any notes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures: dict[str, bytes] = {}
    notes: list[str] = []
    if data.epochs:
        pictures["curves"] = plot_curves(data)
    else:
        notes.append("No training curves: this job trained no epochs (an evaluate job).")
    pictures["confusion"] = plot_confusion(data)
    pictures["per_class"] = plot_per_class(data)
    images, why_not = load_test_images(data_dir, data.result["samples"])
    if images is not None:
        pictures["samples"] = plot_samples(data, images)
    else:
        notes.append(f"No image grid: {why_not}.")
    files = {}
    for name, png in pictures.items():
        path = out_dir / f"{name}.png"
        _replace(path, png)
        files[name] = str(path)
    page = out_dir / "index.html"
    _replace(page, _html(data, pictures, notes).encode("utf-8"))
    return {"job_id": data.job["id"], "html": str(page), "images": files, "notes": notes}


REPORT_FILES = ("index.html", "curves.png", "confusion.png", "per_class.png", "samples.png")


def _replace(path: Path, content: bytes) -> None:
    """Written beside and renamed over: a symlink at `path` is replaced, never followed out of
    the folder, and a reader never sees half a file."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(content)
    try:
        os.replace(tmp.name, path)
    except OSError:
        os.unlink(tmp.name)
        raise


def _curves_caption(data: ReportData) -> str:
    every = data.job["params"].get("log_every")
    logged = (f"the running loss at {len(data.logged_loss)} logged steps (every {every} mini-batches) and "
              if data.logged_loss else "")
    evaluated = ", ".join(str(epoch) for epoch in data.accuracy_by_epoch)
    return f"Left: {logged}the mean loss of each epoch. Right: test accuracy after epoch {evaluated or '-'}."


_TITLES = {"curves": "Loss and accuracy per epoch", "confusion": "Confusion matrix",
           "per_class": "Accuracy per class", "samples": "Test images"}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1040px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; } td, th { padding: 2px 12px; text-align: left; }
tr:nth-child(even) { background: #f4f4f4; } th { border-bottom: 1px solid #999; }
td.num { text-align: right; } img { max-width: 100%; border: 1px solid #ddd; }
.note { color: #8a5a00; }
"""


def _html(data: ReportData, pictures: dict[str, bytes], notes: list[str]) -> str:
    job, result = data.job, data.result
    e = html.escape
    params = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in job["params"].items())
    ran = provenance_rows(job["provenance"], short=False)
    provenance = (f"<table>{''.join(f'<tr><th>{e(k)}</th><td>{e(v)}</td></tr>' for k, v in ran)}</table>" if ran
                  else "<p>Not recorded: the job ran before cifarq recorded what ran.</p>")
    compiled = job["progress"]["compile_seconds"]
    summary = [("status", job["status"]), ("device", job["device"] or "-"), ("worker", job["worker"] or "-"),
               ("created", job["created_at"]), ("finished", job["finished_at"] or "-"),
               *([("compile", f"{compiled:.1f} s before the first epoch (not in its images/s)")] if compiled else []),
               ("test accuracy", f"{100 * result['accuracy']:.1f}% ({result['correct']}/{result['total']})")]
    summary_rows = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in summary)
    class_rows = "".join(
        f"<tr><td>{e(row['class'])}</td><td class=num>{row['correct']}</td><td class=num>{row['total']}</td>"
        f"<td class=num>{100 * row['accuracy']:.1f} %</td></tr>" for row in result["per_class"])
    epoch_rows = "".join(
        f"<tr><td class=num>{m['epoch']}</td><td class=num>{m['loss']:.4f}</td><td class=num>{m['seconds']:.1f}</td>"
        f"<td class=num>{m['images_per_second']:.0f}</td></tr>" for m in data.epochs)
    captions = {"curves": _curves_caption(data)}
    figures = "".join(
        f'<h2>{e(_TITLES[name])}</h2>\n<img id="{name}" alt="{e(_TITLES[name])}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">\n'
        + (f'<p id="{name}-caption">{e(captions[name])}</p>\n' if name in captions else "")
        for name, png in pictures.items())
    note_html = "".join(f'<p class="note">{e(note)}</p>' for note in notes)
    epochs_html = (f"<h2>Epochs</h2><table><tr><th>epoch</th><th>loss</th><th>seconds</th><th>images/s</th></tr>"
                   f"{epoch_rows}</table>") if data.epochs else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cifarq report {e(job['id'])}</title>
<style>{_STYLE}</style></head>
<body>
<h1>cifarq job {e(job['id'])} ({e(job['kind'])})</h1>
<table>{summary_rows}</table>
<h2>Parameters</h2><table>{params}</table>
<h2>What ran</h2>{provenance}
{note_html}
{figures}
{epochs_html}
<h2>Per class</h2>
<table><tr><th>class</th><th>correct</th><th>total</th><th>accuracy</th></tr>{class_rows}</table>
</body></html>
"""
