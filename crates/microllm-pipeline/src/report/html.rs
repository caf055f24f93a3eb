//! The HTML rendering: one self-contained page (inline CSS, inline SVG charts, a few lines of
//! inline script to sort tables), so it opens from a CI artifact or an e-mail with no network.
//!
//! Charts: weight error per layer (one line per kind of linear, log scale), sparsity per layer
//! when the run pruned, block influence when blocks were scored, and the curves of any pass
//! that records some (the slot distillation's loss curves will fill). A sweep's page adds the
//! size against perplexity Pareto front (see [`super::sweep`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::markdown::{gate_rows, overview};
use super::svg::{Series, line_chart};
use super::{CompressionReport, escape};

pub(crate) const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px;text-align:left}\
th{background:#f4f4f4;cursor:pointer}code{font-size:12px;overflow-wrap:anywhere}.pass{color:#fff;background:#2a7;padding:1px 6px;border-radius:3px}\
.fail{color:#fff;background:#c33;padding:1px 6px;border-radius:3px}svg.chart{width:100%;max-width:760px;height:auto;display:block;margin:1em 0}\
.muted{color:#777}";

/// Sorts a table by the clicked column (numbers numerically).
pub(crate) const SCRIPT: &str = "document.querySelectorAll('table.sortable th').forEach(function(th,col){\
th.addEventListener('click',function(){var tb=th.closest('table').tBodies[0];\
var rows=Array.prototype.slice.call(tb.rows);var asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';\
rows.sort(function(a,b){var x=a.cells[col].textContent,y=b.cells[col].textContent;\
var p=parseFloat(x),q=parseFloat(y);var c=(isNaN(p)||isNaN(q))?x.localeCompare(y):p-q;return asc?c:-c;});\
rows.forEach(function(r){tb.appendChild(r);});});});";

/// Opens a page.
pub(crate) fn page_start(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(title)
    )
}

/// Closes a page.
pub(crate) fn page_end() -> String {
    format!("<script>{SCRIPT}</script>\n</body></html>\n")
}

/// The report as a self-contained HTML page.
pub fn html(r: &CompressionReport) -> String {
    let mut h = page_start(&format!("microllm report: {}", r.name));
    let _ = writeln!(h, "<h1>microllm report: {}</h1>", escape(&r.name));
    if !r.variant.is_empty() {
        let v: Vec<String> = r.variant.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            h,
            "<p>Sweep variant <code>{}</code></p>",
            escape(&v.join(", "))
        );
    }
    h.push_str("<table>");
    for (k, v) in overview(r) {
        let _ = write!(
            h,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(k),
            inline_code(&v)
        );
    }
    h.push_str("</table>\n");
    if !r.gates.is_empty() {
        let _ = writeln!(
            h,
            "<h2>Gates: <span class=\"{}\">{}</span></h2><table><thead><tr><th>gate</th><th>value</th><th>result</th></tr></thead><tbody>",
            if r.gates_passed { "pass" } else { "fail" },
            if r.gates_passed {
                "all passed"
            } else {
                "FAILED"
            }
        );
        for (gate, value, passed) in gate_rows(r) {
            let _ = write!(
                h,
                "<tr class=\"gate\"><td><code>{}</code></td><td>{}</td><td><span class=\"{}\">{}</span></td></tr>",
                escape(&gate),
                escape(&value),
                if passed { "pass" } else { "fail" },
                if passed { "PASS" } else { "FAIL" }
            );
        }
        h.push_str("</tbody></table>\n");
    }
    charts(r, &mut h);
    h.push_str("<h2>Passes</h2><table><thead><tr><th>#</th><th>pass</th><th>what</th><th>time</th></tr></thead><tbody>");
    for p in &r.passes {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}{}</td><td>{:.1} s</td></tr>",
            p.index,
            escape(&p.pass),
            escape(&p.summary),
            if p.resumed { " (resumed)" } else { "" },
            p.seconds
        );
    }
    h.push_str("</tbody></table>\n");
    list(&mut h, "Notes", &r.notes);
    let fallbacks: Vec<String> = r
        .fallbacks
        .iter()
        .map(|f| format!("{} -> {}: {}", f.tensor, f.dtype, f.why))
        .collect();
    list(&mut h, "Fallbacks", &fallbacks);
    if !r.layers.is_empty() {
        h.push_str("<h2>Layers</h2><table class=\"sortable\"><thead><tr><th>block</th><th>linear</th><th>type</th><th>weight error</th><th>sparsity</th><th>GPTQ loss</th></tr></thead><tbody>");
        for l in &r.layers {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.3e}</td><td>{}</td><td>{}</td></tr>",
                l.record.layer,
                kind_name(l),
                escape(l.output_type.as_deref().unwrap_or("-")),
                l.record.weight_error,
                l.record
                    .sparsity
                    .map_or("-".into(), |s| format!("{:.4}", s)),
                l.record
                    .gptq_loss
                    .map_or("-".into(), |v| format!("{v:.3e}")),
            );
        }
        h.push_str("</tbody></table>\n");
    }
    h.push_str(&page_end());
    h
}

fn kind_name(l: &super::LayerRecord) -> String {
    serde_json::to_value(l.record.kind)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

fn charts(r: &CompressionReport, h: &mut String) {
    // Per kind of linear: (block, error) and (block, sparsity) points.
    type Points = Vec<(f64, f64)>;
    let mut by_kind: BTreeMap<String, (Points, Points)> = BTreeMap::new();
    for l in &r.layers {
        let e = by_kind.entry(kind_name(l)).or_default();
        e.0.push((l.record.layer as f64, l.record.weight_error));
        if let Some(s) = l.record.sparsity {
            e.1.push((l.record.layer as f64, s));
        }
    }
    if !by_kind.is_empty() {
        h.push_str("<h2>Per-layer error</h2><p class=\"muted\">Relative weight error ||W - W'||² / ||W||² of every linear, by block (log scale).</p>");
        let series: Vec<Series> = by_kind
            .iter()
            .map(|(k, (err, _))| Series {
                name: k.clone(),
                points: err.clone(),
            })
            .collect();
        h.push_str(&line_chart(
            "Weight error per layer",
            "block",
            "relative error",
            &series,
            true,
        ));
        let sparsity: Vec<Series> = by_kind
            .iter()
            .filter(|(_, (_, s))| !s.is_empty())
            .map(|(k, (_, s))| Series {
                name: k.clone(),
                points: s.clone(),
            })
            .collect();
        if !sparsity.is_empty() {
            h.push_str("<h2>Sparsity per layer</h2>");
            h.push_str(&line_chart(
                "Sparsity per layer",
                "block",
                "fraction zero",
                &sparsity,
                false,
            ));
        }
    }
    if let Some(s) = &r.structure {
        let _ = write!(
            h,
            "<h2>Structure</h2><p>Importance: {}. Dropped blocks: {:?}.</p>",
            escape(s.importance["description"].as_str().unwrap_or_default()),
            s.dropped_layers
        );
        if let Some(bi) = &s.block_influence {
            let series = [Series {
                name: "block influence".into(),
                points: bi.iter().enumerate().map(|(i, v)| (i as f64, *v)).collect(),
            }];
            h.push_str(&line_chart(
                "Block influence (1 - cos)",
                "block",
                "influence",
                &series,
                false,
            ));
        }
    }
    let curves: Vec<&super::Curve> = r.passes.iter().flat_map(|p| &p.curves).collect();
    h.push_str("<h2>Training curves</h2>");
    if curves.is_empty() {
        h.push_str(
            "<p class=\"muted\">No pass of this run records curves (distillation passes do).</p>",
        );
    }
    for c in curves {
        // The title names the curve; the legend only its quantity (a long name is clipped).
        let series = [Series {
            name: c.y_label.clone(),
            points: c.points.iter().map(|p| (p[0], p[1])).collect(),
        }];
        h.push_str(&line_chart(&c.name, &c.x_label, &c.y_label, &series, false));
    }
}

fn list(h: &mut String, title: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    let _ = write!(h, "<h2>{}</h2><ul>", escape(title));
    for i in items {
        let _ = write!(h, "<li>{}</li>", escape(i));
    }
    h.push_str("</ul>\n");
}

/// Markdown's `code` spans as HTML.
fn inline_code(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", escape(part));
        } else {
            out.push_str(&escape(part));
        }
    }
    out
}
