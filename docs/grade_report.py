"""The README's screenshot of a `kdlab grade` report: a fabricated class of six chapter-01 submissions (right,
missing T², teacher in train mode, softmax over the batch, an unfinished loop, a cell that raises) graded by
the real command, the HTML report shot with Debian's Chromium through Playwright, then quantised to 64 colours.

    .venv/bin/python docs/grade_report.py build/grade-demo   # writes docs/grade-report.png
"""
import subprocess
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
SETUP = "import torch\nimport torch.nn.functional as F\nfrom kdlab_lib import exercises"
SOFTEN = "exercises.check_soften(lambda z, T: torch.softmax(z / T, dim=-1))"
SOFTEN_BATCH = "exercises.check_soften(lambda z, T: torch.softmax(z / T, dim=0))"
KD = """def my_kd_loss(s, t, T):
    p = torch.softmax(t / T, -1)
    return {t2}(p * (p.log() - torch.log_softmax(s / T, -1))).sum(-1).mean()
exercises.check_kd_loss(my_kd_loss)"""
EPOCH = """def my_distill_epoch(student, teacher, loader, optimizer, T, alpha):
    {mode}
    student.train()
    total, count = 0.0, 0
    for x, y in loader:
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        soft = F.kl_div(F.log_softmax(s_logits / T, -1), F.softmax(t_logits / T, -1), reduction="batchmean")
        loss = alpha * F.cross_entropy(s_logits, y) + (1 - alpha) * {t2}soft
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        count += len(y)
    return total / count
exercises.check_distill_epoch(my_distill_epoch)"""
RIGHT = dict(t2="T * T * ", mode="teacher.eval()")
CLASS = {
    "ada.ipynb": [SETUP, SOFTEN, KD.format(**RIGHT), EPOCH.format(**RIGHT)],
    "ben.ipynb": [SETUP, SOFTEN, KD.format(t2="", mode=""), EPOCH.format(t2="", mode="teacher.eval()")],
    "chloe.ipynb": [SETUP, SOFTEN, KD.format(**RIGHT), EPOCH.format(t2="T * T * ", mode="teacher.train()")],
    "dev.ipynb": [SETUP, SOFTEN_BATCH, KD.format(**RIGHT), EPOCH.format(t2="", mode="teacher.eval()")],
    "emma.ipynb": [SETUP, SOFTEN, KD.format(**RIGHT)],
    "finn.ipynb": [SETUP, SOFTEN, "raise NotImplementedError('my loop')", KD.format(**RIGHT)],
}
paths = []
(out / "submissions").mkdir(exist_ok=True)
for name, cells in CLASS.items():
    nbformat.write(new_notebook(cells=[new_code_cell(c) for c in cells]), out / "submissions" / name)
    paths.append(f"submissions/{name}")
subprocess.run([sys.executable, "-m", "kdlab_lib.cli", "grade", *paths, "--out", "report.html",
                "--csv", "report.csv", "--timeout", "120"], check=True, cwd=out)

from playwright.sync_api import sync_playwright  # noqa: E402

with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1000, "height": 600}, device_scale_factor=1)
    page.goto((out / "report.html").resolve().as_uri())
    page.screenshot(path=str(out / "report.png"), full_page=True)
    browser.close()

from PIL import Image  # noqa: E402

shot = Path(__file__).with_name("grade-report.png")
Image.open(out / "report.png").convert("RGB").quantize(colors=64, method=Image.Quantize.FASTOCTREE).save(
    shot, optimize=True)
print("screenshot:", shot)
