"""The demo pages in a real Firefox (Debian's firefox-esr, driven by selenium through geckodriver).

Firefox is the engine whose upgrade request differs from Chromium's (`Connection: keep-alive,
Upgrade` in many versions, see tests/test_handshake.py): the agent console and the visitor
widget connect, chat both ways, and keep a short-lived token alive by refreshing it on the
open connection (no close 3000, no reconnect). `./dev test` installs firefox-esr and builds
geckodriver once; without them the test skips outside CI and fails in CI.
"""

from __future__ import annotations

import os
import time
import urllib.request
import uuid

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.firefox.options import Options  # noqa: E402
from selenium.webdriver.firefox.service import Service  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

FIREFOX = "/usr/lib/firefox-esr/firefox-esr"
GECKODRIVER = os.environ.get("CHATGW_GECKODRIVER") or os.path.expanduser("~/.cache/chatgw/geckodriver/bin/geckodriver")
TIMEOUT_S = 20
TTL_S = 8


def _firefox():
    missing = [p for p in (FIREFOX, GECKODRIVER) if not os.path.exists(p)]
    if missing:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"not installed: {', '.join(missing)} (./dev test installs them)")
    opts = Options()
    opts.binary_location = FIREFOX
    opts.add_argument("-headless")
    # An explicit driver path keeps selenium-manager (which downloads drivers) out of it.
    return webdriver.Firefox(options=opts, service=Service(executable_path=GECKODRIVER))


def _wait(driver, what, cond, timeout=TIMEOUT_S):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: cond(d), message=what)


def _texts(driver, css):
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css)]


def _attr(css, name, value):
    return lambda d: any(e.get_attribute(name) == value for e in d.find_elements(By.CSS_SELECTOR, css))


def _metric(gw, name: str) -> float:
    with urllib.request.urlopen(gw.http_url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


@pytest.mark.timeout(240)
def test_firefox_demo_chat_with_token_refresh(gateway_factory, tmp_path):
    gw = gateway_factory()
    base = gw.http_url.rstrip("/")
    run = uuid.uuid4().hex[:8]
    tenant = f"firefox-{run}"
    question, answer, later = f"Hello from Firefox ({run})", f"Hello back ({run})", f"After the refresh ({run})"
    agent = _firefox()
    visitor = None
    try:
        visitor = _firefox()
        agent.get(f"{base}/static/agent.html?tenant={tenant}&ttl={TTL_S}")
        _wait(agent, "agent console connected", _attr("#conn", "data-state", "ready"))
        Select(agent.find_element(By.CSS_SELECTOR, "#status")).select_by_value("online")
        _wait(agent, "agent online", _attr("body", "data-status", "online"))

        visitor.get(f"{base}/static/visitor.html?tenant={tenant}&ttl={TTL_S}")
        _wait(visitor, "widget connected", _attr("body", "data-conn", "ready"))
        started = time.time()
        visitor.find_element(By.CSS_SELECTOR, "#chat-bubble").click()
        visitor.find_element(By.CSS_SELECTOR, "#composer-text").send_keys(question)
        visitor.find_element(By.CSS_SELECTOR, "#send").click()
        _wait(visitor, "question acked", lambda d: question in _texts(d, ".msg.mine[data-seq] .bubble"))

        _wait(agent, "conversation listed", lambda d: len(d.find_elements(By.CSS_SELECTOR, ".conv-item")) == 1)
        agent.find_element(By.CSS_SELECTOR, ".conv-item").click()
        _wait(agent, "question shown to the agent", lambda d: question in _texts(d, "#thread .msg.them .bubble"))
        agent.find_element(By.CSS_SELECTOR, "#composer-text").send_keys(answer)
        agent.find_element(By.CSS_SELECTOR, "#send").click()
        _wait(visitor, "answer shown to the visitor", lambda d: answer in _texts(d, ".msg.them .bubble"))

        # Past the first tokens' expiry: both pages refreshed theirs on the open connection.
        _wait(visitor, "the first tokens to expire", lambda d: time.time() > started + TTL_S + 2, timeout=TTL_S + 10)
        visitor.find_element(By.CSS_SELECTOR, "#composer-text").send_keys(later)
        visitor.find_element(By.CSS_SELECTOR, "#send").click()
        _wait(agent, "message after the refresh", lambda d: later in _texts(d, "#thread .msg.them .bubble"))
        assert _metric(gw, "chatgw_tokens_expired_total") == 0.0
        for d in (visitor, agent):
            assert len([t for t in _texts(d, ".msg .bubble") if t == question]) == 1
    finally:
        for name, d in (("agent", agent), ("visitor", visitor)):
            if d is not None:
                try:
                    d.save_screenshot(str(tmp_path / f"firefox-{name}.png"))
                finally:
                    d.quit()
