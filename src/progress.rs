//! Progress bars for the library's [`Progress`] reports.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use microllm_core::Progress;

/// Renders progress on stderr (hidden when stderr is not a terminal).
#[derive(Debug, Default)]
pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
}

impl Bar {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Progress for Bar {
    fn begin(&self, task: &str, total: u64, unit: &str) {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let template = format!(
            "{{msg:>12}} [{{bar:32}}] {{human_pos}}/{{human_len}} {unit} \
             ({{per_sec}}, eta {{eta}}) {{prefix}}"
        );
        bar.set_style(
            ProgressStyle::with_template(&template)
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_message(task.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        *self.bar.lock().expect("progress lock") = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = &*self.bar.lock().expect("progress lock") {
            bar.inc(n);
        }
    }

    fn status(&self, text: &str) {
        if let Some(bar) = &*self.bar.lock().expect("progress lock") {
            if bar.is_hidden() {
                // No terminal (a log file): one line per status, so long runs can be followed.
                let total = bar.length().map_or(String::new(), |n| format!("/{n}"));
                eprintln!("{} {}{total}: {text}", bar.message(), bar.position());
            } else {
                bar.set_prefix(text.to_string());
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().expect("progress lock").take() {
            bar.finish_and_clear();
        }
    }
}
