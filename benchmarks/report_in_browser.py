"""Look at the study's HTML report as a person does: in a real (headless) Chromium, click "Tables", open each
table with its eye icon, count the cells the page shows and save a screenshot of each.

    apt-get install -y chromium chromium-driver && pip install selenium      # once, anywhere
    .venv/bin/snakemake --snakefile workflow/Snakefile --configfile config/demo.yaml --report report.html
    python benchmarks/report_in_browser.py report.html --shots screenshots/

Prints one line per table (its name, the cells shown, the first few cells) and, last, one JSON object with
the same numbers. A table whose page shows no cell (what a Markdown result did: only a download link) fails.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the report.html that snakemake --report wrote")
    parser.add_argument("--shots", type=Path, default=Path("screenshots"),
                        help="folder for the screenshots (default: %(default)s)")
    parser.add_argument("--driver", default="/usr/bin/chromedriver", help="chromedriver (default: %(default)s)")
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000",
                     "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(args.driver), options=options)
    args.shots.mkdir(parents=True, exist_ok=True)
    shown: dict[str, int] = {}
    try:
        driver.get(args.report.resolve().as_uri())
        time.sleep(4)  # the report is a React page that builds itself after loading
        driver.find_element(By.XPATH, "//a[normalize-space()='Tables']").click()
        time.sleep(2)
        names = [row.text.strip() for row in driver.find_elements(By.XPATH, "//table//tr") if row.text.strip()]
        names = [name for name in names if name.lower() != "table"]
        for index, name in enumerate(names):
            driver.find_elements(By.XPATH, "//table//a")[2 * index].click()  # each row: eye icon, then info icon
            time.sleep(3)
            driver.save_screenshot(str(args.shots / f"report_{name}.png"))
            frames = driver.find_elements(By.TAG_NAME, "iframe")
            cells = []
            if frames:
                driver.switch_to.frame(frames[0])
                cells = [cell.text for cell in driver.find_elements(By.TAG_NAME, "td")]
                driver.switch_to.default_content()
            shown[name] = len(cells)
            print(f"{name}: {len(cells)} cells shown, e.g. {cells[:4]}")
    finally:
        driver.quit()
    print(json.dumps({"tables": shown, "screenshots": str(args.shots)}))
    return 0 if shown and all(shown.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
