"""The service's web page (issue 15): the jobs list, a job's report and files, the candidate inspector, the
bearer-token rule, and readable 4xx pages for bad input; then the whole thing in a real browser (headless
Chromium driven by selenium) against live ``hardneg serve`` and ``hardneg worker`` processes."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("fastapi", reason="the service extra: pip install 'hardneg[service]'")
from fastapi.testclient import TestClient  # noqa: E402

from mining_jobs.service.server import create_app  # noqa: E402
from mining_jobs.service.store import SQLiteJobStore  # noqa: E402
from mining_jobs.service.web import render_markdown  # noqa: E402

pytest_plugins = ("mining_fixtures",)  # tiny_bi_encoder, tiny_cross_encoder

TOKEN = "s3cret-token"


def _fake_mining_run(folder: Path, corpus_dir: Path) -> None:
    """A finished mining run: query q1 with a positive, one kept negative, one filtered, one relabelled."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus_dir.mkdir(parents=True, exist_ok=True)
    docs = {"p1": "Solar panels turn sunlight into power.", "k1": "Wind farms spin turbines.",
            "f1": "Photovoltaic cells convert light into electricity.", "r1": "Solar panels make electricity.",
            "n1": "Coal plants burn coal."}
    with open(corpus_dir / "corpus.jsonl", "w") as f:
        for d, t in docs.items():
            f.write(json.dumps({"_id": d, "title": "", "text": t}) + "\n")
    pq.write_table(pa.table({
        "query_id": ["q1", "q2"], "query": ["how do solar panels work", "what is wind power"],
        "positive_id": ["p1", "k1"], "positive": [docs["p1"], docs["k1"]], "positive_score": [2.5, 1.0],
        "positive_source": ["qrels", "qrels"], "negative_ids": [["k1"], []], "negatives": [[docs["k1"]], []],
        "negative_scores": [[-1.25], []], "negative_sources": [["bm25"], []]}), folder / "triples.parquet")
    pq.write_table(pa.table({
        "query_id": ["q1"] * 4, "doc_id": ["k1", "f1", "r1", "n1"],
        "sources": [["bm25"], ["bm25", "dense"], ["dense"], ["bm25"]],
        "bm25_rank": pa.array([3, 1, None, 9], pa.int32()), "bm25_score": pa.array([2.0, 4.0, None, 1.0], pa.float32()),
        "dense_rank": pa.array([None, 2, 1, None], pa.int32()),
        "dense_score": pa.array([None, 0.8, 0.9, None], pa.float32()),
        "ce_score": pa.array([-1.25, 2.375, 3.0, -4.0], pa.float32()),
        "positive_score": pa.array([2.5] * 4, pa.float32()),
        "fate": ["kept", "filtered:relative_margin", "relabelled", "not_sampled"]}), folder / "candidates.parquet")
    (folder / "manifest.json").write_text(json.dumps({"config": {"data": {"name": str(corpus_dir)}}}))
    (folder / "report.md").write_text("# Mining report\n\n| fate | count |\n|---|---|\n| kept | 1 |\n\n"
                                      "![scores](scores.png)\n\n- a <b>list</b> item\n")
    (folder / "scores.png").write_bytes(b"\x89PNG\r\n\x1a\n")


@pytest.fixture
def service(tmp_path):
    store = SQLiteJobStore(tmp_path / "home")
    job = store.create("mine", {"data": {"name": "adi"}}, name="solar")
    _fake_mining_run(Path(job.run_dir), tmp_path / "corpus")
    claimed = store.claim("w", 60)
    store.finish(job.id, claimed.claim, "succeeded", metrics={"triples": 2})
    queued = store.create("train", {"triples": "x"}, name="queued one")
    return store, job, queued


def _client(store, token=None):
    return TestClient(create_app(store, token=token))


def test_the_jobs_page_lists_every_job_with_state_progress_and_a_cancel_form(service):
    store, job, queued = service
    r = _client(store).get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert f"id='job-{job.id}'" in r.text and f"id='job-{queued.id}'" in r.text
    assert "succeeded" in r.text and "queued" in r.text
    assert f"action='/ui/jobs/{queued.id}/cancel'" in r.text  # a queued job can be cancelled
    assert f"action='/ui/jobs/{job.id}/cancel'" not in r.text  # an ended one cannot
    assert "setInterval(refresh" in r.text  # live updates
    c = _client(store)
    r = c.post(f"/ui/jobs/{queued.id}/cancel", follow_redirects=False)
    assert r.status_code == 303 and store.get(queued.id).state == "cancelled"
    assert [j["id"] for j in c.get("/ui/jobs.json").json()] == [queued.id, job.id]


def test_the_job_page_renders_the_report_with_its_plots_and_files(service):
    store, job, _ = service
    r = _client(store).get(f"/ui/jobs/{job.id}")
    assert r.status_code == 200
    assert "<h1>Mining report</h1>" in r.text and "<td>kept</td>" in r.text
    assert f"src='/ui/jobs/{job.id}/files/scores.png'" in r.text
    assert "&lt;b&gt;list&lt;/b&gt;" in r.text  # the report's text is escaped
    assert f"href='/ui/jobs/{job.id}/files/triples.parquet'" in r.text
    assert f"/ui/jobs/{job.id}/inspect?run=" in r.text
    f = _client(store).get(f"/ui/jobs/{job.id}/files/scores.png")
    assert f.status_code == 200 and f.content.startswith(b"\x89PNG")


def test_the_inspector_shows_positives_kept_filtered_and_relabelled_side_by_side(service):
    store, job, _ = service
    r = _client(store).get(f"/ui/jobs/{job.id}/inspect", params={"run": "", "query": "q1"})
    assert r.status_code == 200
    t = r.text
    for panel in ("positives", "kept", "filtered", "relabelled", "other"):
        assert f"id='panel-{panel}'" in t
    assert "Photovoltaic cells convert light into electricity." in t  # a filtered candidate's text
    assert "judge 2.375 vs positive 2.500" in t and "filtered:relative_margin" in t
    assert "judge -1.250 vs positive 2.500" in t and "Wind farms spin turbines." in t  # the kept negative
    assert "BM25 rank 1" in t and "dense rank 2" in t and "bm25, dense" in t
    kept_only = _client(store).get(f"/ui/jobs/{job.id}/inspect", params={"query": "q1", "fate": "kept"}).text
    assert "id='panel-filtered'" not in kept_only and "id='panel-kept'" in kept_only
    by_bm25 = _client(store).get(f"/ui/jobs/{job.id}/inspect", params={"query": "q1", "sort": "bm25"}).text
    other = by_bm25.split("id='panel-other'")[1]
    assert "data-doc='n1'" in other


def test_bad_input_gets_a_readable_4xx_page(service):
    store, job, queued = service
    c = _client(store)
    for url, status, words in (("/ui/jobs/nosuchjob", 404, "No job 'nosuchjob'"),
                               ("/ui/jobs/nosuchjob/inspect", 404, "No job 'nosuchjob'"),
                               (f"/ui/jobs/{job.id}/inspect?query=zzz", 404, "has no query 'zzz'"),
                               (f"/ui/jobs/{job.id}/inspect?fate=lost", 400, "fate 'lost'"),
                               (f"/ui/jobs/{job.id}/inspect?sort=random", 400, "sort 'random'"),
                               (f"/ui/jobs/{queued.id}/inspect", 404, "not a finished mining job"),
                               (f"/ui/jobs/{job.id}/files/..%2F..%2Fetc%2Fpasswd", 404, "has no file"),
                               ("/ui/nowhere", 404, "No page at this address")):
        r = c.get(url)
        assert r.status_code == status, url
        assert r.headers["content-type"].startswith("text/html")
        assert words in r.text and "Traceback" not in r.text, url


def test_the_page_follows_the_bearer_token_rule(service):
    store, job, _ = service
    c = _client(store, token=TOKEN)
    for url in ("/", f"/ui/jobs/{job.id}", f"/ui/jobs/{job.id}/inspect", f"/ui/jobs/{job.id}/files/report.md"):
        r = c.get(url)
        assert r.status_code == 401 and "sign in" in r.text and "Traceback" not in r.text, url
    assert c.get("/ui/jobs.json").status_code == 401
    assert c.post("/ui/login", data={"token": "wrong"}).status_code == 401
    assert c.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    r = c.post("/ui/login", data={"token": TOKEN}, follow_redirects=False)
    assert r.status_code == 303 and "hardneg_token" in r.headers["set-cookie"]
    assert "httponly" in r.headers["set-cookie"].lower()
    assert c.get(f"/ui/jobs/{job.id}/inspect").status_code == 200  # the cookie now signs the pages in


def test_the_web_routes_stay_out_of_the_api_schema(service):
    spec = _client(service[0]).get("/openapi.json").json()
    assert not any(p == "/" or p.startswith("/ui") for p in spec["paths"])


def test_markdown_rendering_escapes_and_links():
    out = render_markdown("# T <x>\n\ntext `code` **b** [r](report.md)\n\n```\n<raw>\n```\n",
                          lambda t: "/f/" + t)
    assert "<h1>T &lt;x&gt;</h1>" in out and "<code>code</code>" in out and "<strong>b</strong>" in out
    assert "<a href='/f/report.md'>r</a>" in out and "<pre>&lt;raw&gt;</pre>" in out


# ---------------------------------------------------------------------------------------------- a real browser


def _browser_or_skip():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        msg = "needs Debian's chromium and chromium-driver (apt install chromium chromium-driver)"
        if os.environ.get("HARDNEG_REQUIRE_BROWSER"):
            pytest.fail(msg + "; .ci/run installs them")
        pytest.skip(msg)
    webdriver = pytest.importorskip("selenium.webdriver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.mark.slow
def test_in_a_real_browser_a_submitted_job_is_watched_and_its_negatives_audited(tmp_path, data_root,
                                                                               tiny_bi_encoder, tiny_cross_encoder):
    from mining_fixtures import subprocess_env
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    from test_service_live import Service as Procs

    from mining_jobs.service.client import Client

    env = subprocess_env(data_root, tmp_path / "cache")
    env["HARDNEG_TOKEN"] = TOKEN
    env["HARDNEG_HOME"] = str(tmp_path / "home")
    models = tmp_path / "home" / "models"  # inside an allowed root of the service's path policy
    shutil.copytree(tiny_bi_encoder, models / "bi")
    shutil.copytree(tiny_cross_encoder, models / "ce")
    procs = Procs(tmp_path / "home", env)
    browser = None
    try:
        url = procs.serve()
        procs.start("worker", "worker", "--home", str(tmp_path / "home"), "--poll", "0.2", "--exit-when-idle")
        (tmp_path / "token").write_text(TOKEN)
        client = Client(url, token_file=str(tmp_path / "token"))
        job = client.submit("mine", {"data": {"name": "adi", "split": "test"},
                                     "candidates": {"model": str(models / "bi"), "bm25_k": 10, "dense_k": 10},
                                     "cross_encoder": {"model": str(models / "ce"), "max_length": 64},
                                     "filter": {"relative_margin": None, "absolute_margin": 0.0},
                                     "sampling": {"num_negatives": 2}}, name="browser test")
        browser = _browser_or_skip()
        wait = WebDriverWait(browser, 240)
        browser.get(url + "/")
        assert "sign in" in browser.page_source  # the token rule holds for the page
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "signin").click()
        row = f"job-{job['id']}"
        wait.until(lambda b: b.find_element(By.ID, row))
        wait.until(lambda b: b.find_element(By.ID, row).find_element(By.CLASS_NAME, "state").text == "succeeded")
        browser.find_element(By.LINK_TEXT, job["id"]).click()
        wait.until(lambda b: b.find_element(By.ID, "report"))
        assert "Mining report" in browser.find_element(By.ID, "report").text
        browser.find_element(By.CLASS_NAME, "inspect").click()
        wait.until(lambda b: b.find_element(By.ID, "panel-positives"))
        # pick a query that has both a filtered candidate and a kept negative
        cands = pq.read_table(Path(client.job(job["id"])["run_dir"]) / "candidates.parquet").to_pylist()
        fates: dict[str, set] = {}
        for c in cands:
            fates.setdefault(c["query_id"], set()).add(c["fate"].split(":")[0])
        query = next(q for q, f in fates.items() if {"kept", "filtered"} <= f)
        Select(browser.find_element(By.ID, "query")).select_by_value(query)
        wait.until(lambda b: b.find_element(By.ID, "query-text").text.startswith(f"{query}:"))
        filtered = browser.find_element(By.ID, "panel-filtered").find_elements(By.CLASS_NAME, "cand")
        kept = browser.find_element(By.ID, "panel-kept").find_elements(By.CLASS_NAME, "cand")
        assert filtered and kept
        for el in (filtered[0], kept[0]):
            score = el.find_element(By.CLASS_NAME, "score").text
            assert score.startswith("judge ") and " vs positive " in score
        assert filtered[0].find_element(By.CLASS_NAME, "fate").text.startswith("filtered:")
        assert kept[0].find_element(By.CLASS_NAME, "fate").text == "kept"
        shot = tmp_path / "inspector.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("HARDNEG_SCREENSHOT"):  # how docs/inspector.png is refreshed
            shutil.copy(shot, os.environ["HARDNEG_SCREENSHOT"])
    finally:
        if browser is not None:
            browser.quit()
        procs.stop()
        time.sleep(0.1)


def test_report_text_cannot_inject_markup_or_scripts():
    out = render_markdown("![a' onerror='alert(1)](s.png) [c](javascript:alert%281%29) [d](data:text/html,x) "
                          "[h](https://example.org/?a=1&b=2)", lambda t: "/f/" + t)
    assert "onerror='alert" not in out and "alt='a&#x27; onerror=&#x27;alert(1)'" in out
    assert "href='javascript:" not in out and "href='data:" not in out
    assert "<a href='https://example.org/?a=1&amp;b=2'>h</a>" in out


def test_odd_file_names_get_a_4xx_page_not_a_500(service):
    store, job, _ = service
    c = _client(store)
    for name in ("a%00b", "x" * 5000, "..%2F..%2Fetc%2Fpasswd"):
        r = c.get(f"/ui/jobs/{job.id}/files/{name}")
        assert r.status_code == 404 and "has no file" in r.text and "Traceback" not in r.text
