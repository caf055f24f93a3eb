//! Gates as JUnit XML, so CI systems (GitHub Actions test reporters, GitLab, Jenkins) show
//! each gate as a test case that passed or failed.

use std::fmt::Write as _;

use super::{CompressionReport, escape};

/// One `<testsuite>` per report (per sweep variant), one `<testcase>` per gate.
pub fn junit_xml(reports: &[&CompressionReport]) -> String {
    let tests: usize = reports.iter().map(|r| r.gates.len()).sum();
    let failures: usize = reports
        .iter()
        .map(|r| r.gates.iter().filter(|g| !g.passed).count())
        .sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"microllm gates\" tests=\"{tests}\" failures=\"{failures}\">"
    );
    for r in reports {
        let name = if r.variant.is_empty() {
            r.name.clone()
        } else {
            let v: Vec<String> = r.variant.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{} [{}]", r.name, v.join(","))
        };
        let fails = r.gates.iter().filter(|g| !g.passed).count();
        let _ = writeln!(
            x,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{fails}\" time=\"{:.3}\">",
            escape(&name),
            r.gates.len(),
            r.total_seconds
        );
        for g in &r.gates {
            let _ = write!(
                x,
                "    <testcase classname=\"{}\" name=\"{}\"",
                escape(&name),
                escape(&g.gate)
            );
            let value = g
                .value
                .map_or("not measured".to_string(), |v| format!("{v}"));
            if g.passed {
                let _ = writeln!(
                    x,
                    "><system-out>{} = {}</system-out></testcase>",
                    escape(&g.metric),
                    escape(&value)
                );
            } else {
                let _ = writeln!(
                    x,
                    "><failure message=\"{} = {}, needs {}\"/></testcase>",
                    escape(&g.metric),
                    escape(&value),
                    escape(&g.gate)
                );
            }
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}
