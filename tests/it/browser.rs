//! The web UI in real headless Chromium against the real binary: log in, create a dashboard
//! and panels, watch an ingested point arrive live, drag a panel and find the layout saved
//! after a reload, drill down, export CSV. Screenshots go to `target/screenshots/`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::browser::{
    SetDownloadBehaviorBehavior, SetDownloadBehaviorParams,
};
use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::cdp::browser_protocol::input::{
    DispatchMouseEventParams, DispatchMouseEventType, MouseButton,
};
use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::Page;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::harness::{now_ms, point, Node, ADMIN_PASSWORD};

/// Debian's Chromium (installed by `tests/run` and `.ci/run`), or `PULSEBOARD_CHROMIUM`.
fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("PULSEBOARD_CHROMIUM") {
        return PathBuf::from(p);
    }
    for p in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("no Chromium found: run `tests/run` (installs it), or set PULSEBOARD_CHROMIUM");
}

fn shots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn shot(page: &Page, name: &str) {
    let path = shots_dir().join(format!("{name}.png"));
    page.save_screenshot(ScreenshotParams::builder().full_page(true).build(), &path)
        .await
        .expect("screenshot");
}

async fn eval(page: &Page, js: &str) -> Value {
    page.evaluate(js)
        .await
        .unwrap_or_else(|e| panic!("evaluate {js}: {e}"))
        .into_value::<Value>()
        .unwrap_or(Value::Null)
}

/// Polls `js` until it is truthy.
async fn wait_for(page: &Page, what: &str, js: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = eval(page, js).await;
        let truthy =
            !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
        if truthy {
            return v;
        }
        if Instant::now() > deadline {
            shot(page, &format!("timeout-{}", what.replace(' ', "-"))).await;
            panic!("timed out waiting for {what} ({js})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(page: &Page, selector: &str) {
    page.find_element(selector)
        .await
        .unwrap_or_else(|e| panic!("find {selector}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {selector}: {e}"));
}

async fn type_into(page: &Page, selector: &str, text: &str) {
    let el = page
        .find_element(selector)
        .await
        .unwrap_or_else(|e| panic!("find {selector}: {e}"));
    el.click().await.expect("focus");
    // Clear what is there (defaults), then type like a user.
    eval(
        page,
        &format!("document.querySelector({selector:?}).value = ''"),
    )
    .await;
    el.type_str(text).await.expect("type");
}

async fn mouse(page: &Page, kind: DispatchMouseEventType, x: f64, y: f64) {
    let p = DispatchMouseEventParams::builder()
        .r#type(kind)
        .x(x)
        .y(y)
        .button(MouseButton::Left)
        .click_count(1)
        .build()
        .expect("mouse event");
    page.execute(p).await.expect("dispatch mouse event");
}

async fn add_panel(page: &Page, title: &str, chart: &str, count: usize) {
    click(page, "#add-panel").await;
    wait_for(
        page,
        "panel editor",
        "!!document.querySelector('#f-metric')",
    )
    .await;
    type_into(page, "#f-title", title).await;
    type_into(page, "#f-metric", "clicks").await;
    type_into(page, "#f-group-by", "country").await;
    eval(
        page,
        "document.querySelector('#f-aggregation').value = 'sum'",
    )
    .await;
    click(page, &format!("#f-types button[data-type={chart}]")).await;
    click(page, "#f-save").await;
    wait_for(
        page,
        "the new panel",
        &format!("document.querySelectorAll('.grid-stack-item').length === {count} && !document.querySelector('.modal-back')"),
    )
    .await;
}

/// A browser with its own profile directory (tests run in parallel).
async fn launch() -> (Browser, tokio::task::JoinHandle<()>, tempfile::TempDir) {
    let profile = tempfile::tempdir().expect("profile dir");
    let (browser, mut handler) = Browser::launch(
        BrowserConfig::builder()
            .chrome_executable(chromium())
            .user_data_dir(profile.path())
            .no_sandbox()
            .window_size(1400, 1000)
            .viewport(None)
            .arg("--disable-gpu")
            .arg("--disable-dev-shm-usage")
            .build()
            .expect("browser config"),
    )
    .await
    .expect("launch Chromium");
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    (browser, events, profile)
}

async fn log_in(page: &Page) {
    wait_for(
        page,
        "the login form",
        "!!document.querySelector('#password')",
    )
    .await;
    type_into(page, "#password", ADMIN_PASSWORD).await;
    click(page, "#login").await;
    wait_for(
        page,
        "the dashboard list",
        "!!document.querySelector('#new-dashboard')",
    )
    .await;
}

#[tokio::test]
async fn the_dashboard_ui_end_to_end() {
    let node = Node::start().await;
    let downloads = tempfile::tempdir().unwrap();
    let (mut browser, events, _profile) = launch().await;
    let page = browser.new_page(node.url("/")).await.expect("page");
    page.execute(
        SetDownloadBehaviorParams::builder()
            .behavior(SetDownloadBehaviorBehavior::Allow)
            .download_path(downloads.path().to_string_lossy().to_string())
            .build()
            .expect("download behaviour"),
    )
    .await
    .expect("allow downloads");

    // Log in.
    wait_for(
        &page,
        "the login form",
        "!!document.querySelector('#password')",
    )
    .await;
    type_into(&page, "#password", ADMIN_PASSWORD).await;
    click(&page, "#login").await;
    wait_for(
        &page,
        "the dashboard list",
        "!!document.querySelector('#new-dashboard')",
    )
    .await;
    shot(&page, "1-list").await;

    // Create a dashboard and two panels.
    click(&page, "#new-dashboard").await;
    type_into(&page, "#d-name", "Browser test").await;
    click(&page, "#d-create").await;
    let hash = wait_for(&page, "the new dashboard", "location.hash.startsWith('#/d/') && !!document.querySelector('#add-panel') && location.hash").await;
    let id: u64 = hash.as_str().unwrap()["#/d/".len()..].parse().unwrap();
    add_panel(&page, "Clicks by country", "table", 1).await;
    add_panel(&page, "Clicks over time", "bar", 2).await;

    // A point ingested over HTTP appears in the panels, live.
    let now = now_ms();
    let (s, b) = node
        .ingest(&json!({"data_points": [
            point("clicks", now, 5.0, &[("country", "de")]),
            point("clicks", now, 3.0, &[("country", "fr")]),
        ]}))
        .await;
    assert_eq!(s, 200, "{b}");
    wait_for(
        &page,
        "the table to show the ingested values",
        "[...document.querySelectorAll('td.num')].map(t => t.textContent).join(',') === '5.00,3.00'",
    )
    .await;
    wait_for(
        &page,
        "the bar chart legend",
        "[...document.querySelectorAll('.u-legend')].some(l => l.textContent.includes('country=de'))",
    )
    .await;
    shot(&page, "2-live").await;

    // Drag the second panel to the right half of the top row.
    let viz: Value = node
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/dashboards/{id}"),
            Some(&node.token),
            None,
        )
        .await
        .1;
    let second = viz["visualizations"][1]["id"].as_u64().unwrap();
    let from = eval(
        &page,
        &format!("(() => {{ const r = document.querySelector('[gs-id=\"{second}\"] .panel-head h2').getBoundingClientRect(); return [r.left + 20, r.top + r.height / 2]; }})()"),
    )
    .await;
    let grid = eval(
        &page,
        "(() => { const r = document.querySelector('.grid-stack').getBoundingClientRect(); return [r.left, r.top, r.width]; })()",
    )
    .await;
    let (fx, fy) = (from[0].as_f64().unwrap(), from[1].as_f64().unwrap());
    let (gx, gy, gw) = (
        grid[0].as_f64().unwrap(),
        grid[1].as_f64().unwrap(),
        grid[2].as_f64().unwrap(),
    );
    let (tx, ty) = (gx + gw * 0.55, gy + 20.0);
    mouse(&page, DispatchMouseEventType::MouseMoved, fx, fy).await;
    mouse(&page, DispatchMouseEventType::MousePressed, fx, fy).await;
    for step in 1..=20 {
        let f = step as f64 / 20.0;
        mouse(
            &page,
            DispatchMouseEventType::MouseMoved,
            fx + (tx - fx) * f,
            fy + (ty - fy) * f,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mouse(&page, DispatchMouseEventType::MouseReleased, tx, ty).await;
    // The layout is saved...
    let deadline = Instant::now() + Duration::from_secs(10);
    let saved = loop {
        let (_, d) = node
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/dashboards/{id}"),
                Some(&node.token),
                None,
            )
            .await;
        let p = d["layout"]["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"].as_u64() == Some(second))
            .cloned()
            .unwrap();
        if p["x"].as_u64().unwrap() >= 6 {
            break p;
        }
        if Instant::now() > deadline {
            shot(&page, "drag-not-saved").await;
            panic!("the dragged layout was not saved: {d}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // ...and survives a reload.
    page.reload().await.expect("reload");
    wait_for(
        &page,
        "the dragged panel after reload",
        &format!(
            "(() => {{ const el = document.querySelector('[gs-id=\"{second}\"]'); return !!el && el.getAttribute('gs-x') === '{}' && (el.getAttribute('gs-y') || '0') === '{}'; }})()",
            saved["x"],
            saved["y"]
        ),
    )
    .await;
    // Let the grid's move animation finish before the picture.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shot(&page, "3-dragged").await;

    // Drill down: clicking a row filters the panel by it.
    wait_for(
        &page,
        "table rows after reload",
        "document.querySelectorAll('tr.clickable').length === 2",
    )
    .await;
    click(&page, "tr.clickable").await;
    wait_for(
        &page,
        "the drill-down breadcrumb",
        "[...document.querySelectorAll('.crumbs button')].some(b => b.textContent.includes('country=de'))",
    )
    .await;
    shot(&page, "4-drilled").await;

    // Export the table panel's data as CSV.
    click(&page, "[data-act=menu]").await;
    click(&page, "[data-act=csv]").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let csv = loop {
        let file = std::fs::read_dir(downloads.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "csv"));
        if let Some(f) = file {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            if !text.is_empty() {
                break text;
            }
        }
        assert!(Instant::now() < deadline, "no CSV was downloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(csv.starts_with("timestamp"), "{csv}");
    assert!(
        csv.contains(",5"),
        "the drilled-down export holds de's value: {csv}"
    );

    browser.close().await.ok();
    let _ = browser.wait().await;
    events.abort();
}

#[tokio::test]
async fn the_demo_dashboard_draws_every_panel_in_both_themes() {
    let node = Node::start_demo().await;
    let (mut browser, events, _profile) = launch().await;
    let page = browser.new_page(node.url("/")).await.expect("page");
    log_in(&page).await;
    click(&page, ".card").await;
    wait_for(
        &page,
        "the demo dashboard",
        "document.querySelectorAll('.grid-stack-item').length === 10",
    )
    .await;
    // Every panel draws something: a chart canvas, a stat value or table rows, and no
    // "no data" or error text.
    let drawn = "[...document.querySelectorAll('.panel-body')].every(b => !b.querySelector('.empty') && (b.querySelector('canvas') || b.querySelector('.stat .value') || b.querySelector('td')))";
    wait_for(&page, "every demo panel to draw", drawn).await;
    // The past-period overlay is drawn next to the live series.
    wait_for(
        &page,
        "the 1 h overlay",
        "[...document.querySelectorAll('.u-legend')].some(l => l.textContent.includes('(−1h)'))",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    shot(&page, "demo-light").await;
    click(&page, "#theme").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_for(&page, "every demo panel to draw in the dark theme", drawn).await;
    shot(&page, "demo-dark").await;
    // A phone: the grid folds into one column and every panel still draws.
    page.execute(SetDeviceMetricsOverrideParams::new(390, 844, 3.0, true))
        .await
        .expect("phone viewport");
    wait_for(
        &page,
        "one column on a phone",
        "!!document.querySelector('.grid-stack.gs-1')",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    wait_for(&page, "every demo panel to draw on a phone", drawn).await;
    shot(&page, "demo-phone").await;
    browser.close().await.ok();
    let _ = browser.wait().await;
    events.abort();
}

#[tokio::test]
async fn a_firing_alert_appears_on_the_dashboard_without_reload() {
    let node = Node::start().await;
    let token = Some(node.token.as_str());
    let (_, d) = node
        .call(
            reqwest::Method::POST,
            "/api/v1/dashboards",
            token,
            Some(&json!({"name": "Boiler"})),
        )
        .await;
    let id = d["id"].as_u64().unwrap();
    let (s, _) = node
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/dashboards/{id}/visualizations"),
            token,
            Some(&json!({"title": "Temperature", "type": "line",
                         "query": {"metric": "temp", "aggregation": "max", "window": "5m", "granularity": "1s"}})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, b) = node
        .call(
            reqwest::Method::POST,
            "/api/v1/alerts",
            token,
            Some(&json!({"name": "Boiler too hot", "query": {"metric": "temp", "aggregation": "max", "window": "1m"},
                         "condition": ">", "threshold": 50, "severity": "critical",
                         "notification_channels": [{"type": "websocket"}]})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    node.ingest(&json!({"data_points": [point("temp", now_ms(), 40.0, &[])]}))
        .await;

    let (mut browser, events, _profile) = launch().await;
    let page = browser.new_page(node.url("/")).await.expect("page");
    log_in(&page).await;
    eval(&page, &format!("location.hash = '#/d/{id}'")).await;
    wait_for(&page, "the panel", "document.querySelectorAll('.grid-stack-item').length === 1 && !!document.querySelector('.u-legend')").await;
    assert_eq!(
        eval(&page, "document.querySelectorAll('.alert-chip').length").await,
        json!(0)
    );
    // A breaching point: the alert shows up on the dashboard and its panel, live.
    node.ingest(&json!({"data_points": [point("temp", now_ms(), 72.0, &[])]}))
        .await;
    wait_for(
        &page,
        "the firing alert on the dashboard",
        "[...document.querySelectorAll('#alert-banner .alert-chip')].some(c => c.textContent.includes('Boiler too hot'))",
    )
    .await;
    wait_for(
        &page,
        "the panel marked as alerting",
        "!!document.querySelector('.panel.alerting')",
    )
    .await;
    shot(&page, "alert-dashboard").await;
    // The alerts page lists the rule as firing and the event in its history.
    click(&page, "#nav-alerts").await;
    wait_for(
        &page,
        "the alerts page",
        "!!document.querySelector('.rule .badge.firing') && document.querySelector('#alert-history').textContent.includes('firing')",
    )
    .await;
    shot(&page, "alert-page").await;
    browser.close().await.ok();
    let _ = browser.wait().await;
    events.abort();
}
