//! Turning the histograms into the markdown table, the goal check and
//! results.json (which bench/chart.py draws).

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::load::{histogram, Errors};

/// A closed-loop phase summed over rounds.
pub struct Acc {
    pub ok: u64,
    pub secs: f64,
    pub hist: Histogram<u64>,
}

impl Acc {
    fn new() -> Self {
        Self {
            ok: 0,
            secs: 0.0,
            hist: histogram(),
        }
    }
    fn rps(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// One round's medians of a target: how far rounds differ within a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Round {
    /// c=1 p50, µs.
    pub c1_p50_us: f64,
    /// Time to first token p50, µs.
    pub ttft_p50_us: f64,
    /// Requests per second at c=64.
    pub rps64: f64,
}

/// Everything measured of one target.
pub struct Row {
    pub name: String,
    pub c1: Histogram<u64>,
    pub c64: Acc,
    pub c256: Acc,
    pub ttft: Histogram<u64>,
    pub gaps: Histogram<u64>,
    /// See `load::StreamTiming::stretches`.
    pub stretch: Histogram<u64>,
    pub cpu_ticks: u64,
    pub cpu_requests: u64,
    pub rss_idle_kib: u64,
    pub rss_peak_c256_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_after_kib: u64,
    pub errors: Errors,
    pub burst: usize,
    pub burst_errors: Errors,
    /// Per round, in the order run.
    pub rounds: Vec<Round>,
}

impl Row {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            c1: histogram(),
            c64: Acc::new(),
            c256: Acc::new(),
            ttft: histogram(),
            gaps: histogram(),
            stretch: histogram(),
            cpu_ticks: 0,
            cpu_requests: 0,
            rss_idle_kib: 0,
            rss_peak_c256_kib: 0,
            rss_peak_kib: 0,
            rss_after_kib: 0,
            errors: Errors::default(),
            burst: 0,
            burst_errors: Errors::default(),
            rounds: Vec::new(),
        }
    }

    fn cpu_us_per_req(&self, ticks_per_sec: u64) -> f64 {
        if self.cpu_requests == 0 {
            return 0.0;
        }
        self.cpu_ticks as f64 * 1e6 / ticks_per_sec as f64 / self.cpu_requests as f64
    }
}

pub struct Meta {
    pub rounds: usize,
    pub requests: usize,
    pub duration_ms: u64,
    pub streams: usize,
    pub chunks: usize,
    pub interval_us: u64,
    pub delay_us: u64,
    pub burst: usize,
    pub ticks_per_sec: u64,
    pub smoke: bool,
    pub polyplex: String,
    /// TOML appended to polyplex's configuration (`--polyplex-config`).
    pub polyplex_config: String,
    /// The `polyplex-b` target's binary and appended TOML, when measured.
    pub polyplex_b: Option<(String, String)>,
}

/// A quantile in µs (NaN when empty).
pub fn us(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The numbers of one row, with "added" taken against the direct row.
struct Derived {
    p50: f64,
    p99: f64,
    added_p50: f64,
    added_p99: f64,
    rps64: f64,
    p99_64_ms: f64,
    rps256: f64,
    p99_256_ms: f64,
    cpu_us: f64,
    added_ttft_p50: f64,
    added_ttft_p99: f64,
    added_gap_p99: f64,
}

fn derive(r: &Row, base: &Row, tps: u64) -> Derived {
    Derived {
        p50: us(&r.c1, 0.5),
        p99: us(&r.c1, 0.99),
        added_p50: us(&r.c1, 0.5) - us(&base.c1, 0.5),
        added_p99: us(&r.c1, 0.99) - us(&base.c1, 0.99),
        rps64: r.c64.rps(),
        p99_64_ms: us(&r.c64.hist, 0.99) / 1000.0,
        rps256: r.c256.rps(),
        p99_256_ms: us(&r.c256.hist, 0.99) / 1000.0,
        cpu_us: r.cpu_us_per_req(tps),
        added_ttft_p50: us(&r.ttft, 0.5) - us(&base.ttft, 0.5),
        added_ttft_p99: us(&r.ttft, 0.99) - us(&base.ttft, 0.99),
        added_gap_p99: us(&r.stretch, 0.99) - us(&base.stretch, 0.99),
    }
}

fn f0(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else {
        format!("{v:.0}")
    }
}

fn f1(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else {
        format!("{v:.1}")
    }
}

fn f2(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else {
        format!("{v:.2}")
    }
}

/// One goal from the issue: what, the limit, the measured value, met?
struct Goal {
    what: &'static str,
    limit: String,
    measured: String,
    met: Option<bool>,
    /// For the per-round rows: in how many rounds the value was within the limit.
    rounds: Option<String>,
}

fn goals(rows: &[Row], base: &Row, tps: u64) -> Vec<Goal> {
    let find = |n: &str| rows.iter().find(|r| r.name == n);
    let d = |n: &str| find(n).map(|r| derive(r, base, tps));
    let mut g = Vec::new();
    // `per_round`: the target and which added value (TTFT or c=1) is also
    // checked round by round.
    let mut le = |what: &'static str,
                  limit: f64,
                  unit: &str,
                  v: Option<f64>,
                  per_round: Option<(&str, bool)>| {
        g.push(Goal {
            what,
            limit: format!("≤ {limit} {unit}"),
            measured: v
                .map(|v| format!("{} {unit}", f1(v)))
                .unwrap_or("not measured".into()),
            met: v.map(|v| v <= limit),
            rounds: per_round.and_then(|(name, ttft)| rounds_within(rows, base, name, limit, ttft)),
        })
    };
    let pt = d("polyplex");
    let tr = d("polyplex-anthropic");
    let on = |x: Option<&Derived>, f: fn(&Derived) -> f64| x.map(f);
    type Limit<'a> = (
        &'static str,
        f64,
        &'a str,
        Option<f64>,
        Option<(&'a str, bool)>,
    );
    let limits: [Limit<'_>; 8] = [
        (
            "passthrough added p50, c=1",
            50.0,
            "µs",
            on(pt.as_ref(), |x| x.added_p50),
            Some(("polyplex", false)),
        ),
        (
            "passthrough added p99, c=1",
            150.0,
            "µs",
            on(pt.as_ref(), |x| x.added_p99),
            None,
        ),
        (
            "translated (Anthropic) added p50, c=1",
            60.0,
            "µs",
            on(tr.as_ref(), |x| x.added_p50),
            Some(("polyplex-anthropic", false)),
        ),
        (
            "idle RSS",
            15.0,
            "MiB",
            find("polyplex").map(|r| mib(r.rss_idle_kib)),
            None,
        ),
        (
            "peak RSS at c=256",
            50.0,
            "MiB",
            find("polyplex").map(|r| mib(r.rss_peak_c256_kib)),
            None,
        ),
        (
            "passthrough added TTFT p50",
            100.0,
            "µs",
            on(pt.as_ref(), |x| x.added_ttft_p50),
            Some(("polyplex", true)),
        ),
        (
            "passthrough added inter-chunk gap p99",
            10.0,
            "µs",
            on(pt.as_ref(), |x| x.added_gap_p99),
            None,
        ),
        (
            "translated added inter-chunk gap p99",
            20.0,
            "µs",
            on(tr.as_ref(), |x| x.added_gap_p99),
            None,
        ),
    ];
    for (what, limit, unit, v, per_round) in limits {
        le(what, limit, unit, v, per_round);
    }
    let ratio = match (pt.as_ref(), d("nginx")) {
        (Some(p), Some(n)) if n.rps64 > 0.0 => Some(p.rps64 / n.rps64 * 100.0),
        _ => None,
    };
    g.push(Goal {
        what: "throughput at c=64 vs nginx",
        limit: "≥ 60 %".into(),
        measured: ratio
            .map(|r| format!("{} %", f0(r)))
            .unwrap_or("not measured (no nginx)".into()),
        met: ratio.map(|r| r >= 60.0),
        rounds: None,
    });
    for n in ["polyplex", "polyplex-anthropic"] {
        if let Some(r) = find(n) {
            g.push(Goal {
                what: if n == "polyplex" {
                    "passthrough errors at concurrent streams"
                } else {
                    "translated errors at concurrent streams"
                },
                limit: "0".into(),
                measured: format!("{} of {}", r.burst_errors.count, r.burst),
                met: Some(r.burst_errors.count == 0 && r.burst >= 512),
                rounds: None,
            });
        }
    }
    g
}

/// A target's added c=1 p50 and added TTFT p50 in each round, against
/// `direct`'s in the same round (NaN where either is missing).
fn added_by_round(r: &Row, base: &Row) -> Vec<(f64, f64)> {
    r.rounds
        .iter()
        .enumerate()
        .map(|(i, x)| match base.rounds.get(i) {
            Some(b) => (x.c1_p50_us - b.c1_p50_us, x.ttft_p50_us - b.ttft_p50_us),
            None => (f64::NAN, f64::NAN),
        })
        .collect()
}

/// The round-by-round table: how much of a difference between two targets
/// holds in every round and how much is one round's host state.
fn rounds_table(rows: &[Row], base: &Row) -> String {
    if base.rounds.len() < 2 {
        return String::new();
    }
    let list = |v: Vec<String>| v.join(", ");
    let mut s = String::from(
        "\n\n### Round by round\n\nEach round's added c=1 p50 and added TTFT p50 (µs, against `direct` in the same round) and req/s at c=64, in the order the rounds ran. A difference between two targets that holds in every round is the targets'; one that flips is the host's.\n\n| target | added c=1 p50 | added TTFT p50 | req/s c=64 |\n|---|---|---|---|\n",
    );
    for r in rows.iter().filter(|r| r.name != "direct") {
        let added = added_by_round(r, base);
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.name,
            list(added.iter().map(|a| f1(a.0)).collect()),
            list(added.iter().map(|a| f1(a.1)).collect()),
            list(r.rounds.iter().map(|x| f0(x.rps64)).collect()),
        ));
    }
    s
}

/// In how many rounds a polyplex row's added value was within a goal's limit.
fn rounds_within(rows: &[Row], base: &Row, name: &str, limit: f64, ttft: bool) -> Option<String> {
    let r = rows.iter().find(|r| r.name == name)?;
    let added = added_by_round(r, base);
    if added.len() < 2 {
        return None;
    }
    let met = added
        .iter()
        .filter(|a| if ttft { a.1 } else { a.0 } <= limit)
        .count();
    Some(format!("{met} of {}", added.len()))
}

pub fn markdown(rows: &[Row], skipped: &[(String, String)], m: &Meta) -> String {
    let mut s = String::new();
    let Some(base) = rows.iter().find(|r| r.name == "direct") else {
        return "no direct baseline\n".into();
    };
    s.push_str(&format!(
        "{}{} rounds (order shuffled each round); per round and target: {} sequential requests at c=1, {} streams of {} chunks {} µs apart, {} ms at c=64 and at c=256; then {} concurrent streams. Upstream delay {} µs. \"Added\" = target minus direct, in µs.\n\n",
        if m.smoke { "**Smoke run — too short to mean anything.** " } else { "" },
        m.rounds, m.requests, m.streams, m.chunks, m.interval_us, m.duration_ms, m.burst, m.delay_us
    ));
    if !m.polyplex_config.trim().is_empty() {
        s.push_str(&format!(
            "**Not polyplex as it ships:** its configuration had this appended: `{}`.\n\n",
            m.polyplex_config.trim().replace('\n', " ")
        ));
    }
    if let Some((bin, conf)) = &m.polyplex_b {
        s.push_str(&format!(
            "`polyplex-b` is a second polyplex (passthrough; `polyplex-b-anthropic` is the same process translating) for comparison: `{bin}`{}; `polyplex` is `{}`.\n\n",
            if conf.trim().is_empty() {
                String::new()
            } else {
                format!(", its configuration with `{}` appended", conf.trim().replace('\n', " "))
            },
            m.polyplex
        ));
    }
    s.push_str("| target | p50 / p99 c=1 (µs) | added p50 | added p99 | req/s c=64 | p99 c=64 (ms) | req/s c=256 | p99 c=256 (ms) | CPU µs/req | RSS idle / c=256 peak / peak / after (MiB) | added TTFT p50 / p99 | added gap p99 | errors | stream errors |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|\n");
    for r in rows {
        let d = derive(r, base, m.ticks_per_sec);
        s.push_str(&format!(
            "| {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} / {} | {} / {} | {} | {} | {} of {} |\n",
            r.name,
            f0(d.p50),
            f0(d.p99),
            f1(d.added_p50),
            f1(d.added_p99),
            f0(d.rps64),
            f2(d.p99_64_ms),
            f0(d.rps256),
            f2(d.p99_256_ms),
            f1(d.cpu_us),
            f1(mib(r.rss_idle_kib)),
            f1(mib(r.rss_peak_c256_kib)),
            f1(mib(r.rss_peak_kib)),
            f1(mib(r.rss_after_kib)),
            f1(d.added_ttft_p50),
            f1(d.added_ttft_p99),
            f1(d.added_gap_p99),
            r.errors.count,
            r.burst_errors.count,
            r.burst,
        ));
    }
    s.push_str("\n`direct` is the upstream itself: its CPU and RSS columns are the mock's own.\n");
    for (n, why) in skipped {
        s.push_str(&format!("\n- `{n}` not measured: {why}"));
    }
    for r in rows {
        if let Some(e) = r.errors.first.as_ref().or(r.burst_errors.first.as_ref()) {
            s.push_str(&format!(
                "\n- first error of `{}`: {}",
                r.name,
                e.replace('\n', " ")
            ));
        }
    }
    s.truncate(s.trim_end().len());
    s.push_str(rounds_table(rows, base).trim_end());
    s.push_str("\n\n### polyplex against the goals\n\n| goal | limit | measured | met | rounds within |\n|---|---|---|---|---|\n");
    for g in goals(rows, base, m.ticks_per_sec) {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            g.what,
            g.limit,
            g.measured,
            match g.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            },
            g.rounds.as_deref().unwrap_or("—"),
        ));
    }
    s
}

fn num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

pub fn json(rows: &[Row], skipped: &[(String, String)], m: &Meta) -> Value {
    let base = rows.iter().find(|r| r.name == "direct");
    let targets: Vec<Value> = rows
        .iter()
        .map(|r| {
            let d = base.map(|b| derive(r, b, m.ticks_per_sec));
            let added = base.map(|b| added_by_round(r, b));
            json!({
                "name": r.name,
                "c1_p50_us": num(us(&r.c1, 0.5)),
                "c1_p99_us": num(us(&r.c1, 0.99)),
                "added_p50_us": d.as_ref().map(|d| num(d.added_p50)),
                "added_p99_us": d.as_ref().map(|d| num(d.added_p99)),
                "rps_c64": r.c64.rps(),
                "p99_c64_ms": num(us(&r.c64.hist, 0.99) / 1000.0),
                "rps_c256": r.c256.rps(),
                "p99_c256_ms": num(us(&r.c256.hist, 0.99) / 1000.0),
                "cpu_us_per_req": r.cpu_us_per_req(m.ticks_per_sec),
                "rss_idle_mib": mib(r.rss_idle_kib),
                "rss_peak_c256_mib": mib(r.rss_peak_c256_kib),
                "rss_peak_mib": mib(r.rss_peak_kib),
                "rss_after_mib": mib(r.rss_after_kib),
                "ttft_p50_us": num(us(&r.ttft, 0.5)),
                "ttft_p99_us": num(us(&r.ttft, 0.99)),
                "gap_p99_us": num(us(&r.gaps, 0.99)),
                "stretch_p50_us": num(us(&r.stretch, 0.5)),
                "stretch_p99_us": num(us(&r.stretch, 0.99)),
                "added_ttft_p50_us": d.as_ref().map(|d| num(d.added_ttft_p50)),
                "added_ttft_p99_us": d.as_ref().map(|d| num(d.added_ttft_p99)),
                "added_gap_p99_us": d.as_ref().map(|d| num(d.added_gap_p99)),
                "errors": r.errors.count,
                "burst": r.burst,
                "burst_errors": r.burst_errors.count,
                "rounds": r.rounds.iter().enumerate().map(|(i, x)| {
                    let added = added.as_ref().map(|a| a[i]);
                    json!({
                        "c1_p50_us": num(x.c1_p50_us),
                        "ttft_p50_us": num(x.ttft_p50_us),
                        "rps_c64": num(x.rps64),
                        "added_c1_p50_us": added.map(|a| num(a.0)),
                        "added_ttft_p50_us": added.map(|a| num(a.1)),
                    })
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "method": {
            "rounds": m.rounds, "requests": m.requests, "duration_ms": m.duration_ms,
            "streams": m.streams, "chunks": m.chunks, "interval_us": m.interval_us,
            "delay_us": m.delay_us, "burst": m.burst, "smoke": m.smoke, "polyplex": m.polyplex,
            "polyplex_config": m.polyplex_config,
            "polyplex_b": m.polyplex_b.as_ref().map(|(bin, conf)| serde_json::json!({"binary": bin, "config": conf})),
        },
        "targets": targets,
        "skipped": skipped.iter().map(|(n, w)| json!({"name": n, "why": w})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(b: Option<(String, String)>) -> Meta {
        Meta {
            rounds: 1,
            requests: 1,
            duration_ms: 1,
            streams: 1,
            chunks: 1,
            interval_us: 1,
            delay_us: 0,
            burst: 1,
            ticks_per_sec: 100,
            smoke: false,
            polyplex: "target/release/polyplex".into(),
            polyplex_config: String::new(),
            polyplex_b: b,
        }
    }

    #[test]
    fn the_second_polyplex_is_named_with_its_binary_and_settings() {
        let rows = vec![
            Row::new("direct"),
            Row::new("polyplex"),
            Row::new("polyplex-b"),
        ];
        let md = markdown(&rows, &[], &meta(None));
        assert!(!md.contains("`polyplex-b` is"), "{md}");
        let b = Some((
            "/tmp/old".to_string(),
            "[server]\nbusy_poll_us = 0\n".to_string(),
        ));
        let md = markdown(&rows, &[], &meta(b.clone()));
        assert!(md.contains("`polyplex-b` is a second polyplex (passthrough; `polyplex-b-anthropic` is the same process translating) for comparison: `/tmp/old`, its configuration with `[server] busy_poll_us = 0` appended; `polyplex` is `target/release/polyplex`."), "{md}");
        assert!(md.contains("| polyplex-b |"), "{md}");
        let j = json(&rows, &[], &meta(b));
        assert_eq!(j["method"]["polyplex_b"]["binary"], "/tmp/old", "{j}");
    }

    #[test]
    fn rounds_are_reported_against_direct_in_the_same_round() {
        let round = |c1, ttft, rps| Round {
            c1_p50_us: c1,
            ttft_p50_us: ttft,
            rps64: rps,
        };
        let mut direct = Row::new("direct");
        direct.rounds = vec![round(20.0, 70.0, 80000.0), round(90.0, 150.0, 60000.0)];
        let mut p = Row::new("polyplex");
        p.rounds = vec![round(60.0, 150.0, 30000.0), round(150.0, 260.0, 25000.0)];
        let mut t = Row::new("polyplex-anthropic");
        t.rounds = vec![round(70.0, 160.0, 28000.0), round(140.0, 280.0, 24000.0)];
        let rows = vec![direct, p, t];
        let md = markdown(&rows, &[], &meta(None));
        assert!(
            md.contains("| polyplex | 40.0, 60.0 | 80.0, 110.0 | 30000, 25000 |"),
            "{md}"
        );
        assert!(
            md.contains("| passthrough added p50, c=1 | ≤ 50 µs | — µs | **no** | 1 of 2 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| translated (Anthropic) added p50, c=1 | ≤ 60 µs | — µs | **no** | 2 of 2 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| passthrough added TTFT p50 | ≤ 100 µs | — µs | **no** | 1 of 2 |"),
            "{md}"
        );
        assert!(
            md.contains("| idle RSS | ≤ 15 MiB | 0.0 MiB | yes | — |"),
            "{md}"
        );
        assert!(!md.contains("\n\n\n"), "{md}");
        let j = json(&rows, &[], &meta(None));
        assert_eq!(j["targets"][1]["rounds"][1]["c1_p50_us"], 150.0, "{j}");
        assert_eq!(j["targets"][1]["rounds"][1]["added_c1_p50_us"], 60.0, "{j}");
        assert_eq!(
            j["targets"][1]["rounds"][0]["added_ttft_p50_us"], 80.0,
            "{j}"
        );
        // One round: no table (the main one says it all).
        let one: Vec<Row> = ["direct", "polyplex"]
            .iter()
            .map(|n| {
                let mut r = Row::new(n);
                r.rounds = vec![round(1.0, 1.0, 1.0)];
                r
            })
            .collect();
        assert!(!markdown(&one, &[], &meta(None)).contains("Round by round"));
    }
}
