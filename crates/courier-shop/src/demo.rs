//! The experiment behind `courier demo`: the same shop, workload and fault schedule, run once as a synchronous
//! chain and once hybrid, measured side by side.
//!
//! Each mode gets a fresh shop (its own data directory and bus). A load generator places orders at the edge at
//! a steady rate; part way through, shipping goes down for a stretch, and later the card processor turns slow
//! (slower than the payment client's deadline). When the load ends the faults are lifted and the run waits for
//! every accepted order to end (Completed or Cancelled). Clients give up after 3 s; every request carries an
//! idempotency key, and one client in 25 sends its request twice (as after a lost response).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier::prelude::*;
use courier_http::client::HttpClient;
use courier_http::server::idempotency::REPLAYED;
use serde::Serialize;

use crate::messages::Line;
use crate::{DECLINED_CARD, Databases, Faults, Mode, OrderStatus, PlaceOrder, Shop, ShopConfig};

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Where each mode's shop keeps its data (a subdirectory per mode).
    pub data_dir: PathBuf,
    /// The bus engine; `None`: a fresh SQLite file in each mode's directory.
    pub engine_url: Option<String>,
    /// The services' databases on PostgreSQL (a schema per service and run, dropped after the run); `None`: SQLite
    /// files in each mode's directory (kept).
    pub database_url: Option<String>,
    /// How long orders are placed, per mode.
    pub duration: Duration,
    /// Orders placed a second.
    pub rate: u32,
    /// When shipping is down, as fractions of `duration` (`None`: never).
    pub shipping_down: Option<(f64, f64)>,
    /// When payments are slow, as fractions of `duration` (`None`: never).
    pub payments_slow: Option<(f64, f64)>,
    /// The card processor's latency while slow.
    pub payments_latency: Duration,
    /// The longest wait, after the load, for accepted orders to end.
    pub drain: Duration,
    /// The modes to run, in order.
    pub modes: Vec<Mode>,
}

impl DemoConfig {
    /// The defaults: 20 s at 40 orders/s per mode; shipping down from 25% to 55% of the run, payments at 1.5 s
    /// from 65% to 80%; both modes (about 50 s in all).
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            engine_url: None,
            database_url: None,
            duration: Duration::from_secs(20),
            rate: 40,
            shipping_down: Some((0.25, 0.55)),
            payments_slow: Some((0.65, 0.80)),
            payments_latency: Duration::from_millis(1500),
            drain: Duration::from_secs(60),
            modes: vec![Mode::SyncChain, Mode::Hybrid],
        }
    }
}

/// One point of a run's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub at_secs: f64,
    /// Orders accepted at the edge so far.
    pub accepted: u64,
    /// Orders completed so far.
    pub completed: u64,
    /// Requests that failed for the client so far.
    pub failed: u64,
    /// p99 edge latency of the requests answered since the previous sample, in ms.
    pub p99_ms: f64,
}

/// What one mode did.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    /// The mode.
    pub mode: Mode,
    /// Orders the load generator tried to place.
    pub attempted: u64,
    /// Accepted at the edge (2xx).
    pub accepted: u64,
    /// Refused with a 4xx (sold out at the stock check): a business answer, not a failure.
    pub refused: u64,
    /// Failed for the client (a 5xx, or no answer within 3 s).
    pub failed: u64,
    /// Accepted orders that ended Completed.
    pub completed: u64,
    /// Accepted orders that ended Cancelled (with a reason).
    pub cancelled: u64,
    /// Accepted orders that never ended (lost): must be 0.
    pub lost: u64,
    /// Repeats absorbed: client retries replayed by the edge's idempotency keys, plus repeated deliveries that
    /// consumers recognised and skipped.
    pub duplicates_absorbed: u64,
    /// Edge latency, all requests, ms.
    pub p50_ms: f64,
    /// Edge latency, all requests, ms.
    pub p99_ms: f64,
    /// Seconds from the first order to the last accepted order's end.
    pub settled_after_secs: f64,
    /// The timeline.
    pub timeline: Vec<Sample>,
}

/// Both runs, and the schedule they ran under.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Per mode.
    pub results: Vec<ModeResult>,
    /// Load length, s.
    pub duration_secs: f64,
    /// Orders a second.
    pub rate: u32,
    /// Fault windows: (label, from s, to s).
    pub faults: Vec<(String, f64, f64)>,
}

/// Progress of a run, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// Placing orders: done of total.
    Loading {
        /// The mode.
        mode: Mode,
        /// Requests answered (or given up on).
        done: u64,
        /// Requests to make.
        total: u64,
    },
    /// Waiting for accepted orders to end.
    Draining {
        /// The mode.
        mode: Mode,
        /// Accepted orders that ended.
        done: u64,
        /// Accepted orders.
        total: u64,
    },
}

#[derive(Debug, Default)]
struct Outcomes {
    accepted: Vec<Uuid>,
    refused: u64,
    failed: u64,
    answered: u64,
    replays_absorbed: u64,
    latencies_ms: Vec<f64>,
    window_ms: Vec<f64>,
}

const SKUS: [&str; 5] = ["rust-mug", "ferris-plush", "crab-socks", "async-book", "limited-poster"];

/// The `i`th order of a run: 2% with a declined card, one in ten for the limited poster (which sells out).
fn order(i: u64) -> PlaceOrder {
    let card = if i % 50 == 7 { DECLINED_CARD.to_owned() } else { "4242424242424242".to_owned() };
    let sku = if i % 10 == 3 { "limited-poster" } else { SKUS[(i % 4) as usize] };
    PlaceOrder {
        email: format!("customer{}@example.com", i % 97),
        card,
        lines: vec![Line { sku: sku.to_owned(), quantity: 1 + (i % 2) as u32 }],
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// Runs every configured mode and returns the report.
pub async fn run(config: &DemoConfig, progress: &(dyn Fn(Progress) + Sync)) -> anyhow::Result<DemoReport> {
    let mut results = Vec::new();
    for (n, mode) in config.modes.iter().enumerate() {
        let dir = config.data_dir.join(format!("{}-{}", n + 1, mode.to_string().replace(' ', "-")));
        std::fs::create_dir_all(&dir)?;
        let engine_url = match &config.engine_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", dir.join("bus.db").display()),
        };
        results.push(run_mode(config, *mode, dir, engine_url, progress).await?);
    }
    let length = config.duration.as_secs_f64();
    let mut faults = Vec::new();
    if let Some((from, to)) = config.shipping_down {
        faults.push(("shipping down".to_owned(), from * length, to * length));
    }
    if let Some((from, to)) = config.payments_slow {
        let label = format!("payments slow ({} ms)", config.payments_latency.as_millis());
        faults.push((label, from * length, to * length));
    }
    Ok(DemoReport { results, duration_secs: length, rate: config.rate, faults })
}

async fn run_mode(
    config: &DemoConfig,
    mode: Mode,
    dir: PathBuf,
    engine_url: String,
    progress: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<ModeResult> {
    let faults = Faults::none();
    // A namespace per run: on a shared broker, queues left by an earlier run are never consumed by this one.
    let namespace = format!("demo{}", Uuid::now_v7().simple().to_string().get(..12).unwrap_or("x"));
    let databases = match &config.database_url {
        Some(url) => Databases::Postgres(url.clone()),
        None => Databases::Sqlite(dir),
    };
    let shop_config =
        ShopConfig::new(databases.clone(), engine_url, mode).faults(faults.clone()).namespace(namespace.clone());
    let shop = Shop::start(shop_config).await?;
    let edge = HttpClient::builder(&shop.addresses().edge).name("client").deadline(Duration::from_secs(3)).build()?;
    let orders = HttpClient::builder(&shop.addresses().orders).name("observer").build()?;
    let total = (config.duration.as_secs_f64() * f64::from(config.rate)).round() as u64;
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let started = Instant::now();
    let length = config.duration.as_secs_f64();
    let in_window =
        |window: Option<(f64, f64)>, at: f64| window.is_some_and(|(a, b)| at >= a * length && at < b * length);

    let mut timeline = Vec::new();
    let mut calls = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(config.rate.max(1))));
    let mut sample_at = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let at = started.elapsed().as_secs_f64();
        faults.set_shipping_down(in_window(config.shipping_down, at));
        faults.set_payments_latency(if in_window(config.payments_slow, at) {
            config.payments_latency
        } else {
            Duration::ZERO
        });
        let (edge, shared) = (edge.clone(), outcomes.clone());
        calls.spawn(async move {
            let sent = Instant::now();
            let key = Uuid::now_v7();
            let place = || edge.post("/orders").json(&order(i)).idempotency_key(key).send();
            let mut result = place().await;
            let took = sent.elapsed().as_secs_f64() * 1000.0;
            // One client in 25 sends its request again with the same key, as after a lost response.
            let mut replayed = false;
            if i % 25 == 11 {
                result = place().await;
                replayed = result.as_ref().is_ok_and(|r| r.header(REPLAYED) == Some("true"));
            }
            let result = result.and_then(|r| r.json::<OrderStatus>());
            let mut o = shared.lock().unwrap_or_else(|p| p.into_inner());
            o.answered += 1;
            o.replays_absorbed += u64::from(replayed);
            o.latencies_ms.push(took);
            o.window_ms.push(took);
            match result {
                Ok(status) => o.accepted.push(status.order_id),
                Err(e) if e.is_client_error() => o.refused += 1,
                Err(_) => o.failed += 1,
            }
        });
        while calls.try_join_next().is_some() {}
        if sample_at.elapsed() >= Duration::from_millis(500) {
            sample_at = Instant::now();
            timeline.push(sample(&outcomes, &orders, started).await);
            let done = outcomes.lock().unwrap_or_else(|p| p.into_inner()).answered;
            progress(Progress::Loading { mode, done, total });
        }
    }
    while calls.join_next().await.is_some() {}
    faults.set_shipping_down(false);
    faults.set_payments_latency(Duration::ZERO);
    progress(Progress::Loading { mode, done: total, total });

    // Wait for every accepted order to end.
    let accepted = outcomes.lock().unwrap_or_else(|p| p.into_inner()).accepted.clone();
    let drain_until = Instant::now() + config.drain;
    let mut open: Vec<Uuid> = accepted.clone();
    let (mut completed, mut cancelled) = (0u64, 0u64);
    loop {
        let mut still_open = Vec::new();
        for id in open {
            match orders.get(&format!("/orders/{id}")).send_json::<OrderStatus>().await {
                Ok(status) if status.status == "Completed" => completed += 1,
                Ok(status) if status.status == "Cancelled" => cancelled += 1,
                _ => still_open.push(id),
            }
        }
        open = still_open;
        progress(Progress::Draining {
            mode,
            done: accepted.len() as u64 - open.len() as u64,
            total: accepted.len() as u64,
        });
        if open.is_empty() || Instant::now() >= drain_until {
            break;
        }
        timeline.push(sample(&outcomes, &orders, started).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settled_after_secs = started.elapsed().as_secs_f64();
    timeline.push(sample(&outcomes, &orders, started).await);
    let consumer_duplicates = shop.stats().duplicates_absorbed();
    shop.shutdown().await;
    // A run's SQLite files stay in its directory; its PostgreSQL schemas would pile up in a shared database.
    databases.drop_schemas(&namespace).await?;

    let o = outcomes.lock().unwrap_or_else(|p| p.into_inner());
    let latencies = sorted(o.latencies_ms.clone());
    Ok(ModeResult {
        mode,
        attempted: total,
        accepted: o.accepted.len() as u64,
        refused: o.refused,
        failed: o.failed,
        completed,
        cancelled,
        lost: open.len() as u64,
        duplicates_absorbed: consumer_duplicates + o.replays_absorbed,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        settled_after_secs,
        timeline,
    })
}

async fn sample(outcomes: &Mutex<Outcomes>, orders: &HttpClient, started: Instant) -> Sample {
    let completed = match orders.get("/orders").send_json::<BTreeMap<String, u64>>().await {
        Ok(counts) => counts.get("Completed").copied().unwrap_or(0),
        Err(_) => 0,
    };
    let mut o = outcomes.lock().unwrap_or_else(|p| p.into_inner());
    let window = sorted(std::mem::take(&mut o.window_ms));
    Sample {
        at_secs: started.elapsed().as_secs_f64(),
        accepted: o.accepted.len() as u64,
        completed,
        failed: o.failed,
        p99_ms: percentile(&window, 0.99),
    }
}

impl DemoReport {
    /// The side-by-side table, as Markdown.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = write!(out, "| | ");
        for r in &self.results {
            let _ = write!(out, "{} | ", r.mode);
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "|---|{}", "---:|".repeat(self.results.len()));
        let rows: [Row; 11] = [
            ("orders placed by clients", |r| r.attempted.to_string()),
            ("accepted at the edge", |r| r.accepted.to_string()),
            ("refused (sold out)", |r| r.refused.to_string()),
            ("failed for clients (5xx, timeout)", |r| r.failed.to_string()),
            ("completed", |r| r.completed.to_string()),
            ("cancelled (with reason)", |r| r.cancelled.to_string()),
            ("lost (accepted, never ended)", |r| r.lost.to_string()),
            ("duplicates absorbed", |r| r.duplicates_absorbed.to_string()),
            ("edge latency p50", |r| format!("{:.1} ms", r.p50_ms)),
            ("edge latency p99", |r| format!("{:.1} ms", r.p99_ms)),
            ("all settled after", |r| format!("{:.1} s", r.settled_after_secs)),
        ];
        for (label, value) in rows {
            let _ = write!(out, "| {label} | ");
            for r in &self.results {
                let _ = write!(out, "{} | ", value(r));
            }
            let _ = writeln!(out);
        }
        out
    }

    /// A self-contained HTML page with the table and charts (inline SVG; no server, no scripts).
    pub fn html(&self) -> String {
        const COLORS: [&str; 4] = ["#d9480f", "#1971c2", "#2f9e44", "#7048e8"];
        let mut progress_series = Vec::new();
        let mut latency_series = Vec::new();
        for (i, r) in self.results.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points = |f: fn(&Sample) -> f64| r.timeline.iter().map(|s| (s.at_secs, f(s))).collect::<Vec<_>>();
            progress_series.push((format!("{}: accepted", r.mode), color, false, points(|s| s.accepted as f64)));
            progress_series.push((format!("{}: completed", r.mode), color, true, points(|s| s.completed as f64)));
            latency_series.push((format!("{}: p99", r.mode), color, false, points(|s| s.p99_ms)));
        }
        let mut page = String::new();
        let _ = write!(
            page,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Courier demo: sync chain vs hybrid</title>\
             <style>body{{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}}\
             table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}\
             td:first-child,th:first-child{{text-align:left}}</style></head><body>\
             <h1>Sync chain vs hybrid, same load, same faults</h1>\
             <p>{} orders a second for {:.0} s per mode. Shaded: the fault windows.</p>",
            self.rate, self.duration_secs
        );
        page.push_str(&markdown_table_to_html(&self.table()));
        page.push_str("<h2>Orders accepted (solid) and completed (dashed) over time</h2>");
        page.push_str(&svg_chart(&progress_series, &self.faults, "orders"));
        page.push_str("<h2>Edge latency p99 over time</h2>");
        page.push_str(&svg_chart(&latency_series, &self.faults, "ms"));
        page.push_str("</body></html>\n");
        page
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn markdown_table_to_html(table: &str) -> String {
    let mut html = String::from("<table>");
    for (i, line) in table.lines().enumerate() {
        if i == 1 {
            continue;
        }
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        let tag = if i == 0 { "th" } else { "td" };
        html.push_str("<tr>");
        for cell in cells {
            let _ = write!(html, "<{tag}>{}</{tag}>", escape(cell));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    html
}

/// A table row: its label and how to show a mode's value.
type Row = (&'static str, fn(&ModeResult) -> String);

type Series<'a> = (String, &'a str, bool, Vec<(f64, f64)>);

fn svg_chart(series: &[Series<'_>], shaded: &[(String, f64, f64)], unit: &str) -> String {
    let (width, height, left, bottom, top, right) = (900.0, 320.0, 60.0, 30.0, 10.0, 180.0);
    let max_x = series.iter().flat_map(|s| s.3.iter().map(|p| p.0)).fold(1.0_f64, f64::max);
    let max_y = series.iter().flat_map(|s| s.3.iter().map(|p| p.1)).fold(1.0_f64, f64::max) * 1.05;
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let x = |v: f64| left + v / max_x * plot_w;
    let y = |v: f64| top + plot_h - v / max_y * plot_h;
    let mut svg = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\">");
    for (i, (label, from, to)) in shaded.iter().enumerate() {
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{plot_h}\" fill=\"{}\" opacity=\"0.15\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#555\">{}</text>",
            x(*from),
            (x(*to) - x(*from)).max(1.0),
            if i % 2 == 0 { "#e03131" } else { "#f08c00" },
            x(*from) + 3.0,
            top + 12.0 + 12.0 * i as f64,
            escape(label)
        );
    }
    let _ = write!(
        svg,
        "<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#333\"/>\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{0}\" stroke=\"#333\"/>",
        top + plot_h,
        left + plot_w
    );
    for step in 0..=4 {
        let v = max_y * f64::from(step) / 4.0;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{v:.0}</text>",
            left - 4.0,
            y(v) + 4.0
        );
        let t = max_x * f64::from(step) / 4.0;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{t:.0} s</text>",
            x(t),
            height - 8.0
        );
    }
    let _ = write!(svg, "<text x=\"4\" y=\"{:.1}\" font-size=\"11\">{}</text>", top + 10.0, escape(unit));
    for (i, (label, color, dashed, points)) in series.iter().enumerate() {
        let path: Vec<String> = points.iter().map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b))).collect();
        let dash = if *dashed { " stroke-dasharray=\"6 4\"" } else { "" };
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash} points=\"{}\"/>\
             <line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\">{}</text>",
            path.join(" "),
            width - right + 10.0,
            top + 14.0 + 18.0 * i as f64,
            width - right + 34.0,
            top + 14.0 + 18.0 * i as f64,
            width - right + 38.0,
            top + 18.0 + 18.0 * i as f64,
            escape(label)
        );
    }
    svg.push_str("</svg>");
    svg
}
