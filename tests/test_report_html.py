"""summarize.py --html: one self-contained page, opened in a real headless browser (Debian's chromium).

The browser is required, not optional: ``.ci/run`` installs it, and without it these tests fail.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import statistics
import subprocess
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from helper.checkpoint import save_atomic
from models import model_dict
from scripts import analyze, summarize, transfer
from tests.fakedata import write_stl10
from tests.runfolders import write_run

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WINDOW = (1280, 6000)  # tall enough for the whole test page: one screenshot shows all of it
KD = (0.1, 0.9, 0.0)
KD_RUN = "S:wrn_16_2_T:wrn_40_2_cifar100_kd_r:0.1_a:0.9_b:0.0_1"
# Records the page's layout once it has loaded: the document height and each image's box and decoded width.
PROBE = """<pre id="probe"></pre><script>
window.addEventListener("load", function () {
  var boxes = [];
  document.querySelectorAll("img").forEach(function (image) {
    var box = image.getBoundingClientRect();
    boxes.push({x: box.left + window.scrollX, y: box.top + window.scrollY, w: box.width, h: box.height,
                natural: image.naturalWidth});
  });
  document.getElementById("probe").textContent = JSON.stringify(
    {height: document.documentElement.scrollHeight, images: boxes});
});
</script>"""


def _analysis(out: Path) -> None:
    """The two files pairs of scripts/analyze.py, drawn from known numbers (no network needed)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    points = rng.normal(size=(40, 2)) + labels[:, None] * 3
    networks = {"dataset": "cifar100", "student": {"arch": "wrn_16_2", "run": KD_RUN, "test_acc": 74.1},
                "teacher": {"arch": "wrn_40_2", "run": "wrn_40_2_vanilla_cifar100_trial_1", "test_acc": 75.6}}
    figure = analyze.plot_tsne([("student", points), ("teacher", points[::-1])], labels, "t-SNE")
    out.mkdir(parents=True)
    analyze.write_figure(out, analyze.TSNE_FILE, figure, {"kind": "tsne", **networks, "labels": labels.tolist()})
    difference, mean = analyze.correlation_difference(rng.uniform(0, 2, (8, 8)), np.zeros((8, 8)))
    figure = analyze.plot_correlation(difference, mean, 3.0, "difference")
    analyze.write_figure(out, analyze.CORRELATION_FILE, figure,
                         {"kind": "correlation", **networks, "mean_abs_difference": mean})


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A save folder (a CIFAR-100 pair, three KD trials, an unfinished run, a probe, analysis plots) and its page."""
    root = tmp_path_factory.mktemp("report")
    save = root / "save"
    for trial, last in enumerate([79.0, 79.6], 1):
        write_run(save, "wrn_40_2", [70.0, last], trial=str(trial))
    write_run(save, "wrn_16_2", [60.0, 73.1], trial="1")
    kd = [74.0, 74.6, 75.1]
    for trial, last in enumerate(kd, 1):
        folder = write_run(save, "wrn_16_2", [55.0, 70.0, last], teacher="wrn_40_2", method="kd", weights=KD,
                           trial=str(trial))
    unfinished = write_run(save, "wrn_16_2", [50.0], teacher="wrn_40_2", method="crd", weights=(1.0, 0.0, 0.8),
                           finished=None)
    torch.manual_seed(0)
    student = folder / "wrn_16_2_last.pth"
    save_atomic({"model": model_dict["wrn_16_2"](num_classes=100).state_dict(), "arch": "wrn_16_2",
                 "num_classes": 100, "dataset": "cifar100", "method": "kd", "run_name": KD_RUN}, student)
    stl10 = write_stl10(root / "stl10", n_train=20, n_test=10)
    assert transfer.main(["--path", str(student), "--dataset", "stl10", "--data_root", str(stl10), "--save_dir",
                          str(save), "--epochs", "1", "--device", "cpu", "--print_freq", "1000"]) == 0
    _analysis(folder / "analysis")
    page = root / "pages" / "report.html"
    assert summarize.main([str(save), "--compare", "--out", str(root / "out"), "--html", str(page)]) == 0
    return {"page": page, "save": save, "kd": kd, "unfinished": unfinished}


def _browser(*args: str, profile: Path) -> subprocess.CompletedProcess:
    assert Path(CHROMIUM).is_file(), ("chromium is not installed: apt-get install chromium "
                                      "(.ci/run installs it before the tests)")
    return subprocess.run([CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}",
                           f"--window-size={WINDOW[0]},{WINDOW[1]}", *args],
                          capture_output=True, text=True, timeout=120, check=True)


def test_the_page_stands_alone(report):
    text = report["page"].read_text()
    assert "<script" not in text and "<link" not in text
    assert not re.search(r'(?:src|href)="(?:https?:)?//', text)  # nothing fetched from the network
    sources = re.findall(r'<img src="([^"]*)"', text)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)  # 2 curves, 2 analyses


def test_every_link_reaches_a_file_of_the_save_folder(report):
    page = report["page"]
    links = re.findall(r'<a href="(\./|\.\./)([^"#]*)"', page.read_text())
    targets = {(page.parent / unquote(html.unescape(prefix + rest))).resolve() for prefix, rest in links}
    assert targets and all(target.is_file() for target in targets)
    assert report["unfinished"] / "metrics.jsonl" in targets
    assert any(target.name == "linear_last.pth" for target in targets)  # the probe's folder is linked too


def test_the_browser_renders_the_tables_and_the_images(report, tmp_path):
    page = report["page"]
    probed = page.with_name("probed.html")
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = _browser("--dump-dom", probed.as_uri(), profile=tmp_path / "profile_dom").stdout

    kd = report["kd"]
    mean, std = statistics.mean(kd), statistics.stdev(kd)
    assert f"{mean:.2f} ± {std:.2f} (3) vs 74.92 ({mean - 74.92:+.2f})" in dom  # the KD cell beside RepDistiller's
    assert "79.30 ± 0.42 (2) vs 75.61 (+3.69)" in dom  # the teacher row
    assert "Transfer (linear probe)" in dom and "vs 70.90" in dom  # the probe beside the CRD paper's KD
    unfinished = dom[dom.index('id="unfinished"'):]
    assert report["unfinished"].name in html.unescape(unfinished) and "1/? epochs, no summary.json" in unfinished

    layout = json.loads(html.unescape(re.search(r'<pre id="probe">([^<]*)</pre>', dom).group(1)))
    assert layout["height"] <= WINDOW[1]
    assert len(layout["images"]) == 4 and all(image["natural"] > 0 for image in layout["images"])

    shot = tmp_path / "page.png"
    _browser(f"--screenshot={shot}", page.as_uri(), profile=tmp_path / "profile_shot")
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (WINDOW[1], WINDOW[0])
    for image in layout["images"]:
        top, left = int(image["y"]) + 2, int(image["x"]) + 2
        region = pixels[top:top + int(image["h"]) - 4, left:left + int(image["w"]) - 4]
        assert region.size > 100 * 100
        assert (region < 200).mean() > 0.01 and region.std() > 10, image  # drawn lines and text, not a blank box
