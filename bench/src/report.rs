//! Markdown tables: medians, min–max, p50/p99, paired ratios.

use crate::{Contender, Run};

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn fmt_rate(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.0}k", x / 1000.0)
    } else if x >= 1000.0 {
        format!("{:.1}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

pub fn table(title: &str, contenders: &[Contender], runs: &[Vec<Run>], concurrency: usize) {
    let refs: Vec<(usize, &'static str)> = contenders
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.reference.map(|r| (i, r)))
        .collect();
    println!("### {title}, concurrency {concurrency}\n");
    let cpu = contenders.iter().any(|c| c.server.is_some());
    let mut header =
        "| contender | ops/s (median) | min–max | p50 µs | p99 µs | app CPU µs/op |".to_owned();
    let mut rule = "|---|---:|---:|---:|---:|---:|".to_owned();
    if cpu {
        header.push_str(" server CPU µs/op |");
        rule.push_str("---:|");
    }
    for (_, r) in &refs {
        header.push_str(&format!(" × {r} |"));
        rule.push_str("---:|");
    }
    println!("{header}\n{rule}");
    for (i, c) in contenders.iter().enumerate() {
        let rates: Vec<f64> = runs[i].iter().map(|r| r.ops_per_sec).collect();
        let min = rates.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = rates.iter().cloned().fold(0.0, f64::max);
        let mut lat: Vec<u32> = runs[i]
            .iter()
            .flat_map(|r| r.latencies_us.iter().copied())
            .collect();
        lat.sort_unstable();
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        let mut line = format!(
            "| {} | {} | {}–{} | {p50} | {p99} |",
            c.name,
            fmt_rate(median(rates.clone())),
            fmt_rate(min),
            fmt_rate(max),
        );
        if title.starts_with("Middleware") {
            let table = format!("{title}, concurrency {concurrency}");
            crate::charts::latency(&table, &c.name, p50, p99);
        }
        let own: Vec<f64> = runs[i].iter().filter_map(|r| r.client_us_per_op).collect();
        if own.is_empty() {
            line.push_str(" — |");
        } else {
            line.push_str(&format!(" {:.1} |", median(own)));
        }
        if cpu {
            let per_op: Vec<f64> = runs[i].iter().filter_map(|r| r.server_us_per_op).collect();
            if per_op.is_empty() {
                line.push_str(" — |");
            } else {
                line.push_str(&format!(" {:.1} |", median(per_op)));
            }
        }
        let charted = c
            .name
            .starts_with("coatcheck")
            .then(|| tower_sessions_of(&c.name, &refs))
            .flatten();
        for (j, _) in &refs {
            // Paired: the ratio within each repetition, then the median of those.
            let ratios: Vec<f64> = runs[i]
                .iter()
                .zip(&runs[*j])
                .map(|(a, b)| a.ops_per_sec / b.ops_per_sec)
                .collect();
            let ratio = median(ratios);
            line.push_str(&format!(" {ratio:.2} |"));
            if charted == Some(*j) {
                crate::charts::ratio(format!("{title}, c{concurrency}: {}", c.name), ratio);
            }
        }
        println!("{line}");
    }
    println!();
}

/// The tower-sessions contender a coatcheck row is charted against: the only one, or the
/// one whose label's last word (its store) the row's name has.
fn tower_sessions_of(name: &str, refs: &[(usize, &'static str)]) -> Option<usize> {
    let ours: Vec<(usize, &str)> = refs
        .iter()
        .filter(|(_, r)| r.starts_with("tower-sessions"))
        .copied()
        .collect();
    if let [(only, _)] = ours.as_slice() {
        return Some(*only);
    }
    let name = name.to_lowercase();
    ours.iter()
        .find(|(_, r)| r.rsplit(' ').next().is_some_and(|w| name.contains(w)))
        .map(|(j, _)| *j)
}
