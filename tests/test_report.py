"""`cifarq report` and `cifarq compare` on jobs a real worker trained, on each backend; the
report's page rendered by a real headless browser."""
from __future__ import annotations

import base64
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.test_end_to_end import FAST

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The sizes api_cli/report_render.py promises (inches x 100 dpi), written out again: a change must be deliberate.
SIZES = {"curves": (1000, 400), "confusion": (700, 600), "per_class": (800, 400), "samples": (800, 500)}


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def trained(backend_env):
    """Two finished train jobs that differ in lr, and an evaluation of the first one's epoch 1."""
    env = backend_env
    first = env.submit_train(*FAST)
    second = env.submit_train(*FAST[:2], "--lr", "0.002", *FAST[4:])
    for job_id in (first, second):
        assert env.cli("wait", job_id, "--timeout", "180").returncode == 0
    early = env.cli_json("submit", "evaluate", "--checkpoint", f"{first}:1")["id"]
    assert env.cli("wait", early, "--timeout", "120").returncode == 0
    return first, second, early


def test_report_writes_real_pngs_and_a_self_contained_page(backend_env, trained, tmp_path):
    env = backend_env
    first, _, early = trained
    out = tmp_path / "report"
    written = env.cli_json("report", first[:6], "--out", str(out))
    assert written["job_id"] == first and written["notes"] == []
    assert set(written["images"]) == set(SIZES)
    for name, size in SIZES.items():
        data = Path(written["images"][name]).read_bytes()
        assert png_size(data) == size, name
        assert len(data) > 5000, f"{name}.png is too small to hold a figure"

    page = (out / "index.html").read_text()
    assert written["html"] == str(out / "index.html")
    embedded = re.findall(r'<img id="(\w+)" alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [name for name, _ in embedded] == ["curves", "confusion", "per_class", "samples"]
    for name, encoded in embedded:
        assert base64.b64decode(encoded) == Path(written["images"][name]).read_bytes()
    results = env.cli_json("results", first)
    assert f"{100 * results['accuracy']:.1f}%" in page and "airplane" in page and "lr" in page
    assert "http" not in page.replace("http-equiv", ""), "self-contained: nothing to fetch"

    # The loss at every logged step (200 images at batch 4: 50 steps an epoch, a line every 10
    # over 8 epochs), and the accuracy curve has the evaluation of epoch 1 besides the last epoch.
    assert env.cli_json("results", early)["total"] == 100
    caption = re.search(r'<p id="curves-caption">([^<]*)</p>', page)[1]
    assert caption == ("Left: the running loss at 40 logged steps (every 10 mini-batches) and the mean loss of "
                       "each epoch. Right: test accuracy after epoch 1, 8.")

    # Without the data set on the client, the grid is left out with a note; the rest is there.
    bare = env.cli("report", first, "--out", str(tmp_path / "bare"), extra_env={"CIFARQ_DATA_DIR": str(tmp_path)})
    assert bare.stdout.strip() == str(tmp_path / "bare" / "index.html")
    assert "No image grid: no CIFAR-10 test set under" in bare.stderr
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == \
        ["confusion.png", "curves.png", "index.html", "per_class.png"]
    assert "No image grid" in (tmp_path / "bare" / "index.html").read_text()

    # The official archive alone is read in place; a different data set gives no grid.
    import tarfile

    from tests.fakedata import write_cifar10

    archived = tmp_path / "archived"
    archived.mkdir()
    with tarfile.open(archived / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(Path(env.vars["CIFARQ_DATA_DIR"]) / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from_tar = env.cli_json("report", first, "--out", str(tmp_path / "tar"), extra_env={"CIFARQ_DATA_DIR": str(archived)})
    assert png_size(Path(from_tar["images"]["samples"]).read_bytes()) == SIZES["samples"]
    assert sorted(p.name for p in archived.iterdir()) == ["cifar-10-python.tar.gz"]
    other = write_cifar10(tmp_path / "other", seed=7)
    foreign = env.cli_json("report", first, "--out", str(tmp_path / "foreign"), extra_env={"CIFARQ_DATA_DIR": str(other)})
    assert "samples" not in foreign["images"]
    assert foreign["notes"] == [(f"No image grid: the test set under {other} is not the one the job was evaluated "
                                 "on (labels differ).")]

    # A report already there is kept without --force; a planted symlink is replaced, never followed.
    again = env.cli("report", first, "--out", str(out), check=False)
    assert again.returncode == 1 and again.stderr.startswith(f"error: {out} already holds index.html, curves.png")
    outside = tmp_path / "outside.txt"
    outside.write_text("not cifarq's")
    (out / "index.html").unlink()
    (out / "index.html").symlink_to(outside)
    env.cli("report", first, "--out", str(out), "--force")
    assert outside.read_text() == "not cifarq's" and not (out / "index.html").is_symlink()
    assert "<html" in (out / "index.html").read_text()

    # The default place is the artifacts directory (rewritten freely); a job without results is an error.
    env.cli("report", first)
    default = env.cli("report", first).stdout.strip()
    assert default == str(env.home / "artifacts" / first / "report" / "index.html") and Path(default).is_file()
    queued = env.submit_train("--epochs", "1", "--device", "cuda")
    refused = env.cli("report", queued, check=False)
    assert refused.returncode == 1 and refused.stderr == f"error: job {queued} has no results yet (status: queued)\n"
    env.cli("cancel", queued)


def test_compare_puts_jobs_side_by_side_with_deltas(backend_env, trained):
    env = backend_env
    first, second, _ = trained
    a, b = env.cli_json("results", first), env.cli_json("results", second)
    data = env.cli_json("compare", first, second)
    assert data["baseline"] == first and [j["id"] for j in data["jobs"]] == [first, second]
    assert data["jobs"][1]["params"]["lr"] == 0.002 and data["jobs"][0]["params"]["lr"] == 0.01
    (delta,) = data["deltas"]
    assert delta["id"] == second and delta["accuracy"] == pytest.approx(b["accuracy"] - a["accuracy"])
    for row_a, row_b in zip(a["per_class"], b["per_class"]):
        assert delta["per_class"][row_a["class"]] == pytest.approx(row_b["accuracy"] - row_a["accuracy"])

    text = env.cli("compare", first, second).stdout
    assert re.search(r"^lr\*\s+0\.01\s+0\.002\s*$", text, re.MULTILINE), text
    epochs = FAST[FAST.index("--epochs") + 1]
    assert re.search(rf"^epochs\s+{epochs}\s+{epochs}\s*$", text, re.MULTILINE), "unchanged params carry no star"
    signed = f"{100 * (b['accuracy'] - a['accuracy']):+.1f}"
    assert f"{100 * b['accuracy']:.1f}% ({signed})" in text

    alone = env.cli("compare", first, check=False)
    assert alone.returncode == 1 and "two or more job ids" in alone.stderr


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(chromium() is None, reason="no chromium on PATH (Debian package `chromium`): the page is "
                                                "not rendered in a browser here")
def test_the_page_renders_in_a_headless_browser(backend_env, trained, tmp_path):
    if backend_env.vars.get("CIFARQ_DATABASE_URL"):
        pytest.skip("the page does not depend on the backend: rendered once, on sqlite")
    from PIL import Image

    out = tmp_path / "report"
    backend_env.cli("report", trained[0], "--out", str(out))
    shot = tmp_path / "screenshot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1100,2600"]
    url = (out / "index.html").as_uri()
    subprocess.run([chromium(), *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1100, 2600)
    # The figures are coloured (blue bars and heat map, green/red labels); the page's own text is
    # grey on white. Many saturated pixels mean the embedded PNGs were decoded and drawn.
    import numpy as np

    hsv = np.asarray(image.convert("HSV"))
    saturated = int(((hsv[..., 1] > 120) & (hsv[..., 2] > 60)).sum())
    assert saturated > 20000, f"only {saturated} coloured pixels: the figures did not render"
    # The DOM after load has the four figures with their data in place.
    dom = subprocess.run([chromium(), *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert len(re.findall(r'<img id="\w+" alt="[^"]+" src="data:image/png;base64,', dom)) == 4
