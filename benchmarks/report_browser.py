"""Render a study report in a real headless browser (Chromium) and check the screenshot.

    python benchmarks/report_browser.py                      # a hand-built demo study
    python benchmarks/report_browser.py results/quickstart   # a real results directory

Writes the report, screenshots index.html with `chromium --headless --screenshot`, and checks
that the PNG has the requested size and is not blank (enough non-white pixels). Prints the time
to write the report, its size, and the time to render it. Exits 0 with a note when no Chromium
is installed.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str | None:
    """The first Chromium-like browser on PATH, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(html: Path, png: Path, *, width: int = 1280, height: int = 2400,
               browser: str | None = None, timeout: float = 120.0) -> Path:
    """Render `html` headless into `png` (width × height pixels)."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError(f"no Chromium on PATH (looked for {', '.join(BROWSERS)})")
    with tempfile.TemporaryDirectory() as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                   "--no-first-run", "--disable-background-networking",
                   "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                   f"--user-data-dir={profile}", f"--screenshot={png}",
                   f"--window-size={width},{height}", html.resolve().as_uri()]
        subprocess.run(command, check=True, timeout=timeout, capture_output=True)
    if not png.is_file():
        raise RuntimeError(f"{browser} wrote no screenshot to {png}")
    return png


def check_png(png: Path) -> dict:
    """Size and ink of a screenshot: the fraction of pixels that are not near-white."""
    from PIL import Image

    image = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    ink = float((image.min(axis=2) < 230).mean())
    colours = len(np.unique(image.reshape(-1, 3)[::97], axis=0))
    return {"width": image.shape[1], "height": image.shape[0], "ink": ink, "colours": colours}


def demo_results(directory: Path) -> Path:
    """A small hand-built partial study (the test suite's record factory)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from record_factory import make_record, paper_records, write_records

    records = paper_records(epochs=3) + paper_records(epochs=6)[:5]
    records.append(make_record(test_acc=None, op="resnet_e2", position=1, status="failed"))
    return write_records(directory / "demo", records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", help="results directory (default: a demo study)")
    parser.add_argument("--out", default=None, help="reports root (default: a temporary folder)")
    args = parser.parse_args(argv)
    from opswap.report import write_report

    browser = find_browser()
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(args.results) if args.results else demo_results(Path(tmp))
        start = time.perf_counter()
        index = write_report(results, Path(args.out or tmp) / "reports" / results.resolve().name)
        written = time.perf_counter() - start
        print(f"report {index}: {index.stat().st_size / 1e6:.2f} MB in {written:.1f} s")
        if browser is None:
            print("no Chromium on PATH: browser check skipped")
            return 0
        start = time.perf_counter()
        png = screenshot(index, index.with_name("screenshot.png"), browser=browser)
        stats = check_png(png)
        print(f"{browser}: rendered in {time.perf_counter() - start:.1f} s → {png} {stats}")
        ok = stats["width"] == 1280 and stats["ink"] > 0.02 and stats["colours"] > 20
        print("browser check:", "ok" if ok else "FAILED (blank or wrong size)")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
