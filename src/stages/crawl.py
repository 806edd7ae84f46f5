"""Stage crawl: collect candidate images, verify and store them, write the crawl manifest.

Sources (params ``crawl.source``):
  demo   serve data/demo/site on 127.0.0.1 for the duration of the crawl and crawl it from
         /index.html with the demo profile, under the canonical origin ``crawl.demo.origin``
  sites  crawl the start URLs of the profiles listed in ``crawl.sites``
  manifest  download the images of a released CAN manifest (``crawl.manifest``), crop its boxes
  folder  ingest a local folder of photos (``crawl.folder``); see docs/REAL_MODE.md

Outputs: data/crawl/images/ (verified JPEGs), data/crawl/manifest.csv, data/crawl/crawl_info.json
(dates and hosts, for a datasheet), metrics/crawl.json. A killed crawl resumes from
data/crawl_state/ when rerun.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dermcan import __version__, atomic_io
from dermcan.crawl_manifest import MANIFEST_COLUMNS, summarize
from dermcan.crawling import CrawlConfig, Crawler, CrawlResult, SiteProfile, open_journal
from dermcan.folder_ingest import collect_folder
from dermcan.image_store import ImageStore, publish_images
from dermcan.loopback_server import serve_site
from dermcan.params import load_stage_params
from dermcan.released_manifest_images import collect_released_manifest, write_empty_box_outputs
from dermcan.url_safety import LOOPBACK_NETWORKS

log = logging.getLogger("crawl")

DEMO_SITE = Path("data/demo/site")
IMAGES_DIR = Path("data/crawl/images")
MANIFEST_PATH = Path("data/crawl/manifest.csv")
INFO_PATH = Path("data/crawl/crawl_info.json")
METRICS_PATH = Path("metrics/crawl.json")
# One row per manifest line, and the crops of its boxes; empty unless crawl.source is manifest.
BOXES_PATH = Path("data/crawl/manifest_boxes.csv")
CROPS_DIR = Path("data/crawl/crops")
# dvc repro deletes a stage's outs before it runs, so the resume journal and the verified images
# live outside them, in a folder that dvc.yaml does not declare at all.
STATE_DIR = Path("data/crawl_state")


def crawl_profiles(
    config: CrawlConfig,
    profiles: list[SiteProfile],
    store: ImageStore,
    connect_to: Mapping[str, str] | None = None,
) -> CrawlResult:
    """Crawl ``profiles``, resuming from the journal in STATE_DIR when its settings match."""
    journal = open_journal(STATE_DIR / "journal.jsonl", config, profiles, store)
    try:
        return Crawler(config, store=store, journal=journal, connect_to=connect_to).crawl(profiles)
    finally:
        journal.close()


def crawl_demo(config: CrawlConfig, params: Mapping[str, Any], store: ImageStore) -> CrawlResult:
    if not (DEMO_SITE / "index.html").is_file():
        raise FileNotFoundError(f"{DEMO_SITE / 'index.html'} not found: run `dvc repro demo_web` first")
    profile = config.profile(params["demo"]["profile"])
    config = config.allowing_networks(LOOPBACK_NETWORKS)  # the demo web is served from 127.0.0.1
    with serve_site(DEMO_SITE) as site:
        return crawl_profiles(config, [profile], store, connect_to={params["demo"]["origin"]: site.base_url})


def crawl_sites(config: CrawlConfig, params: Mapping[str, Any], store: ImageStore) -> CrawlResult:
    names = list(params.get("sites") or [])
    if not names:
        raise ValueError("crawl.source is sites but crawl.sites lists no profile: add profile names there")
    return crawl_profiles(config, [config.profile(name) for name in names], store)


def crawl_manifest(config: CrawlConfig, params: Mapping[str, Any], store: ImageStore) -> CrawlResult:
    return collect_released_manifest(
        config, params["manifest"], store,
        journal_path=STATE_DIR / "journal.jsonl", crops_dir=CROPS_DIR, boxes_path=BOXES_PATH,
    )  # fmt: skip


def crawl_folder(config: CrawlConfig, params: Mapping[str, Any], store: ImageStore) -> CrawlResult:
    return collect_folder(config, params["folder"], store)


# A source fills ``store`` and returns the finalized manifest rows. main() publishes the stored
# images of the downloaded rows to IMAGES_DIR.
SOURCES: dict[str, Callable[[CrawlConfig, Mapping[str, Any], ImageStore], CrawlResult]] = {
    "demo": crawl_demo,
    "sites": crawl_sites,
    "manifest": crawl_manifest,
    "folder": crawl_folder,
}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = load_stage_params("crawl")
    source = params["source"]
    if source not in SOURCES:
        raise ValueError(f"unknown crawl.source {source!r}; valid sources are: {', '.join(sorted(SOURCES))}")
    config = CrawlConfig.from_params(params)

    STATE_DIR.mkdir(parents=True, exist_ok=True)
    # A killed run leaves the temporary file it was writing; its images are refetched anyway.
    for folder in (STATE_DIR, MANIFEST_PATH.parent):
        atomic_io.remove_stale_temporaries(folder)
    # DVC leaves cache: false outs to git, so the scratch folder ignores itself.
    atomic_io.write_text(STATE_DIR / ".gitignore", "*\n")
    store = config.open_image_store(STATE_DIR / "images")

    started_at = datetime.datetime.now(datetime.timezone.utc)
    clock = time.monotonic()
    result = SOURCES[source](config, params, store)
    if source != "manifest":
        write_empty_box_outputs(CROPS_DIR, BOXES_PATH)  # dvc.yaml declares them for every source
    wall_time_s = time.monotonic() - clock
    finished_at = datetime.datetime.now(datetime.timezone.utc)

    downloaded = (row["sha256"] for row in result.rows if row["status"] == "downloaded")
    publish_images(store, downloaded, IMAGES_DIR)

    metrics = summarize(result.rows)
    atomic_io.write_csv(MANIFEST_PATH, result.rows, MANIFEST_COLUMNS)
    atomic_io.write_json(METRICS_PATH, {**metrics, "pages_fetched": result.pages_fetched,
                                        "pages_failed": len(result.pages_failed)})
    atomic_io.write_json(INFO_PATH, {
        "source": source,
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": finished_at.isoformat(timespec="seconds"),
        "wall_time_s": round(wall_time_s, 2),
        "hosts": result.hosts,
        "user_agent": config.http.user_agent,
        "robots_user_agent": config.robots_user_agent,
        "pages_failed": result.pages_failed,
        "resumed_pages": result.resumed_pages,
        "resumed_images": result.resumed_images,
        "dermcan_version": __version__,
    })
    counts = {status: count for status, count in metrics["by_status"].items() if count}
    log.info("crawled %d candidate images in %.1f s: %s", metrics["candidates"], wall_time_s, counts)


def explain_full_disk(error: OSError) -> str:
    folders = " and ".join(str(folder.resolve()) for folder in (STATE_DIR, MANIFEST_PATH.parent))
    written = f" while writing {error.filename}" if error.filename else ""
    return (
        f"crawl stopped because the disk is full{written}. Free space on the disk holding {folders} "
        "(or move those folders to a larger disk) and rerun the stage: it resumes from "
        f"{STATE_DIR / 'journal.jsonl'} and keeps every image stored so far."
    )


if __name__ == "__main__":
    try:
        main()
    except OSError as error:
        if not atomic_io.is_disk_full(error):
            raise
        log.error("%s", explain_full_disk(error))
        raise SystemExit(1) from None
