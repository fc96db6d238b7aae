//! `alerts:`: the error-rate alert's settings.

use std::time::Duration;

use super::context::Cx;
use crate::config::ConfigError;
use crate::config::PipelineFile;

/// Error-rate alert settings.
#[derive(Debug, Clone)]
pub struct ErrorRateAlert {
    /// Fires above this fraction.
    pub threshold: f64,
    /// Window length.
    pub window: Duration,
    /// Records needed in the window before it can fire.
    pub min_records: u64,
    /// Where alerts are POSTed.
    pub webhook: Option<String>,
}

/// The error-rate alert, if configured.
pub(super) fn error_rate(
    cx: Cx,
    pipeline: &PipelineFile,
) -> Result<Option<ErrorRateAlert>, ConfigError> {
    let Some(e) = &pipeline.alerts.error_rate else {
        return Ok(None);
    };
    if !(0.0..1.0).contains(&e.threshold) {
        return Err(cx.at(
            None,
            "alerts.error_rate.threshold",
            format!("{} is not a fraction in [0, 1) (5 % is 0.05)", e.threshold),
        ));
    }
    if let Some(url) = &e.webhook
        && !(url.value.starts_with("http://") || url.value.starts_with("https://"))
    {
        return Err(cx.at(
            Some(&url.span),
            "alerts.error_rate.webhook",
            format!("{:?} is not an http(s) URL", url.value),
        ));
    }
    Ok(Some(ErrorRateAlert {
        threshold: e.threshold,
        window: e.window.0.max(Duration::from_secs(1)),
        min_records: e.min_records,
        webhook: e.webhook.as_ref().map(|w| w.value.clone()),
    }))
}
