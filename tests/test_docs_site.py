"""The documentation site: built by `.ci/build_site.py` (MkDocs Material, strict about broken links), opened in headless
Chromium, with a screenshot kept per build. Chromium comes from Debian's `chromium` package, which `.ci/run` installs;
elsewhere the browser part is skipped unless MINISIGLIP_REQUIRE_BROWSER=1 (as in CI) makes its absence a failure."""
import functools, http.server, json, os, re, shutil, socketserver, subprocess, sys, threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / 'site'
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--window-size=1280,1600', '--virtual-time-budget=8000']   # time for KaTeX to run


@pytest.fixture(scope='module')
def site() -> Path:
    "The site built from the committed docs/, as `make docs` builds it."
    res = subprocess.run([sys.executable, str(ROOT / '.ci' / 'build_site.py')], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr               # a broken link or anchor fails the build
    return SITE


@pytest.fixture(scope='module')
def browser(site, tmp_path_factory):
    "`open(page, screenshot=None) -> DOM after scripts ran`, over a local HTTP server of the site."
    chromium = shutil.which('chromium') or shutil.which('chromium-browser')
    if chromium is None:
        if os.environ.get('MINISIGLIP_REQUIRE_BROWSER') == '1': pytest.fail('chromium is not installed')
        pytest.skip('chromium is not installed (apt-get install chromium; CI installs it)')
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    handler = functools.partial(Quiet, directory=str(site))
    server = socketserver.TCPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    profile = tmp_path_factory.mktemp('chromium')

    def open_page(page: str, screenshot: Path | None = None) -> str:
        url = f'http://127.0.0.1:{server.server_address[1]}/{page}'
        run = lambda *what: subprocess.run([chromium, *CHROMIUM_FLAGS, f'--user-data-dir={profile}', *what, url],
                                           capture_output=True, text=True, timeout=120)
        if screenshot is not None:
            run(f'--screenshot={screenshot}')
            assert screenshot.is_file() and screenshot.stat().st_size > 10_000, f'no screenshot of {url}'
            print(f'screenshot of {url}: {screenshot}')
        dom = run('--dump-dom').stdout
        assert '</html>' in dom, f'{url} did not load'
        return dom
    yield open_page
    server.shutdown()


def no_raw_tex(dom: str) -> bool:
    "No `$` outside code and scripts: every formula was typeset (a stray `$$` shows a display formula misread)."
    return '$' not in re.sub(r'<(script|pre|code)\b.*?</\1>', '', dom, flags=re.S)


def test_every_lesson_is_a_page_and_the_search_index_holds_the_api(site):
    lessons = sorted(p.stem for p in (ROOT / 'nbs').glob('[0-9]*.ipynb'))
    assert all((site / lesson / 'index.html').is_file() for lesson in lessons)
    for page in [site / 'index.html', *(site / lesson / 'index.html' for lesson in lessons)]:
        assert no_raw_tex(page.read_text()), f'{page}: a formula was not recognised as maths'
    index = json.loads((site / 'search' / 'search_index.json').read_text())
    titles = {doc['title'] for doc in index['docs']}
    assert {'sigmoid_loss', 'chunked_sigmoid_loss', 'ring_sigmoid_loss', 'load_siglip'} <= titles


def test_home_page_renders_title_maths_and_reading_path(browser):
    dom = browser('', screenshot=SITE / 'screenshot_index.png')
    assert re.search(r'<title>minisiglip\b', dom)
    assert 'Reading path' in dom and 'Results at a glance' in dom
    assert 'class="katex"' in dom                                      # $t' = \log 10$ typeset by KaTeX
    assert no_raw_tex(dom)


def test_lesson_page_renders_maths_a_plot_and_an_api_entry(browser, site):
    dom = browser('00_losses/', screenshot=SITE / 'screenshot_00_losses.png')
    assert '<title>00 · Losses' in dom
    assert dom.count('class="katex-display"') >= 2 and no_raw_tex(dom)  # the losses' display formulas, typeset
    plots = re.findall(r'<img[^>]+src="([^"]+\.png)"', dom)
    assert plots and all((site / '00_losses' / src).is_file() for src in plots)
    assert 'id="sigmoid_loss"' in dom and 'sigmoid_loss' in dom        # an API entry: heading, signature, source link
    assert 'href="https://github.com/minisiglip/minisiglip/blob/main/minisiglip/losses.py#L' in dom
