//! Trace export settings: OpenTelemetry's own environment variables
//! (<https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/>),
//! read and checked here at start-up like every other setting, so a typo
//! stops the process with the variable's name instead of being ignored (the
//! SDK on its own falls back to a default and carries on).
//!
//! Export is on exactly when an OTLP endpoint is set. The exporter itself
//! still reads the variables that only it uses (`OTEL_EXPORTER_OTLP_HEADERS`,
//! `..._TIMEOUT`, `..._COMPRESSION`, the per-signal `..._TRACES_*` forms).

use clap::{Args, ValueEnum};
use opentelemetry::KeyValue;
use std::time::Duration;

use crate::config::parse_millis;

/// OTLP export of traces. Off (no exporter, no spans built) unless
/// `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set.
#[derive(Debug, Clone, Args)]
pub struct TracingConfig {
    /// OTLP collector base URL (`http://collector:4318` for http/protobuf,
    /// `http://collector:4317` for grpc); traces go to `<url>/v1/traces` over
    /// HTTP. Unset: no export.
    #[arg(long = "otel-exporter-otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub endpoint: Option<url::Url>,
    /// Full URL for traces only (used as given, no path appended); wins over
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[arg(long = "otel-exporter-otlp-traces-endpoint", env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub traces_endpoint: Option<url::Url>,
    /// OTLP transport: http/protobuf or grpc (http/json is not supported).
    #[arg(
        long = "otel-exporter-otlp-protocol",
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        value_enum,
        default_value = "http/protobuf"
    )]
    pub protocol: OtlpProtocol,
    /// `service.name` of the spans (default: `dlr-ingest` / `dlr-worker`).
    #[arg(long = "otel-service-name", env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,
    /// Extra resource attributes, `key=value,key=value` (values may be
    /// percent-encoded), e.g. `deployment.environment.name=prod`.
    #[arg(long = "otel-resource-attributes", env = "OTEL_RESOURCE_ATTRIBUTES", value_parser = parse_resource_attributes)]
    pub resource_attributes: Option<ResourceAttributes>,
    /// Sampler: always_on, always_off, traceidratio, parentbased_always_on,
    /// parentbased_always_off, parentbased_traceidratio.
    #[arg(
        long = "otel-traces-sampler",
        env = "OTEL_TRACES_SAMPLER",
        value_enum,
        default_value = "parentbased_always_on"
    )]
    pub sampler: SamplerKind,
    /// The ratio of the `*traceidratio` samplers, 0.0 to 1.0 (default 1.0).
    #[arg(long = "otel-traces-sampler-arg", env = "OTEL_TRACES_SAMPLER_ARG", value_parser = parse_ratio)]
    pub sampler_arg: Option<f64>,
    /// Finished spans waiting for export; beyond it spans are dropped and
    /// counted (`dlr_trace_spans_dropped_total`), never waited for.
    #[arg(long = "otel-bsp-max-queue-size", env = "OTEL_BSP_MAX_QUEUE_SIZE", default_value_t = 2048, value_parser = parse_positive)]
    pub max_queue_size: usize,
    /// Milliseconds between two exports.
    #[arg(long = "otel-bsp-schedule-delay", env = "OTEL_BSP_SCHEDULE_DELAY", default_value = "5000", value_parser = parse_millis)]
    pub schedule_delay: Duration,
    /// Spans per export request (at most the queue size).
    #[arg(long = "otel-bsp-max-export-batch-size", env = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", default_value_t = 512, value_parser = parse_positive)]
    pub max_export_batch_size: usize,
    /// Milliseconds one export may take (default: the exporter's
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, 10000).
    #[arg(long = "otel-bsp-export-timeout", env = "OTEL_BSP_EXPORT_TIMEOUT", value_parser = parse_millis)]
    pub export_timeout: Option<Duration>,
}

impl TracingConfig {
    /// True when spans are exported (an endpoint is set).
    pub fn exporting(&self) -> bool {
        self.endpoint.is_some() || self.traces_endpoint.is_some()
    }

    /// The settings with export off, for tools and tests that build a
    /// configuration by hand.
    pub fn off() -> Self {
        Self {
            endpoint: None,
            traces_endpoint: None,
            protocol: OtlpProtocol::HttpProtobuf,
            service_name: None,
            resource_attributes: None,
            sampler: SamplerKind::ParentbasedAlwaysOn,
            sampler_arg: None,
            max_queue_size: 2048,
            schedule_delay: Duration::from_secs(5),
            max_export_batch_size: 512,
            export_timeout: None,
        }
    }

    /// The sampler named by `OTEL_TRACES_SAMPLER` and its argument.
    pub fn sampler(&self) -> opentelemetry_sdk::trace::Sampler {
        use opentelemetry_sdk::trace::Sampler;
        let ratio = self.sampler_arg.unwrap_or(1.0);
        match self.sampler {
            SamplerKind::AlwaysOn => Sampler::AlwaysOn,
            SamplerKind::AlwaysOff => Sampler::AlwaysOff,
            SamplerKind::Traceidratio => Sampler::TraceIdRatioBased(ratio),
            SamplerKind::ParentbasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerKind::ParentbasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            SamplerKind::ParentbasedTraceidratio => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
            }
        }
    }

    /// `service.name`: `OTEL_SERVICE_NAME`, else the one in
    /// `OTEL_RESOURCE_ATTRIBUTES`, else `default` (the specification's
    /// order; its own default, `unknown_service`, would hide which binary
    /// a span came from).
    pub fn service_name(&self, default: &str) -> String {
        self.service_name
            .clone()
            .filter(|name| !name.is_empty())
            .or_else(|| {
                self.resource_attributes.as_ref().and_then(|attributes| {
                    attributes.0.iter().find(|(k, _)| k == "service.name").map(|(_, v)| v.clone())
                })
            })
            .unwrap_or_else(|| default.to_owned())
    }

    /// The resource attributes, `service.name` excluded (see [`Self::service_name`]).
    pub fn resource_attributes(&self) -> Vec<KeyValue> {
        self.resource_attributes
            .iter()
            .flat_map(|a| a.0.iter())
            .filter(|(k, _)| k != "service.name")
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
            .collect()
    }
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP POST (the specification's default).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
    /// OTLP/gRPC.
    #[value(name = "grpc")]
    Grpc,
}

/// `OTEL_TRACES_SAMPLER`, the values the specification defines that need
/// no remote service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Every trace.
    AlwaysOn,
    /// No trace.
    AlwaysOff,
    /// A share of traces by trace id (`OTEL_TRACES_SAMPLER_ARG`).
    Traceidratio,
    /// As the caller decided; every root trace.
    ParentbasedAlwaysOn,
    /// As the caller decided; no root trace.
    ParentbasedAlwaysOff,
    /// As the caller decided; a share of root traces.
    ParentbasedTraceidratio,
}

/// `OTEL_RESOURCE_ATTRIBUTES`, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceAttributes(pub Vec<(String, String)>);

/// Parses `key=value,key=value` with percent-encoded values (W3C Baggage
/// octets, as the specification says).
pub fn parse_resource_attributes(text: &str) -> Result<ResourceAttributes, String> {
    let mut attributes = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not key=value"));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("{pair:?} has an empty key"));
        }
        let value =
            percent_decode(value.trim()).ok_or_else(|| format!("{pair:?}: invalid percent-encoding"))?;
        attributes.push((key.to_owned(), value));
    }
    Ok(ResourceAttributes(attributes))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("{text:?} is not a number from 0.0 to 1.0")),
    }
}

fn parse_positive(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{text:?} is not a whole number greater than 0")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Demo {
        #[command(flatten)]
        tracing: TracingConfig,
    }

    #[test]
    fn resource_attributes_are_decoded_and_service_name_comes_first_from_its_own_variable() {
        let attributes = parse_resource_attributes("service.name=crm%20bridge, k8s.namespace.name=dlr");
        assert_eq!(
            attributes,
            Ok(ResourceAttributes(vec![
                ("service.name".to_owned(), "crm bridge".to_owned()),
                ("k8s.namespace.name".to_owned(), "dlr".to_owned()),
            ]))
        );
        let mut config = TracingConfig::off();
        config.resource_attributes = attributes.ok();
        assert_eq!(config.service_name("dlr-ingest"), "crm bridge");
        assert_eq!(config.resource_attributes().len(), 1);
        config.service_name = Some("ingest-eu".to_owned());
        assert_eq!(config.service_name("dlr-ingest"), "ingest-eu");
        assert_eq!(TracingConfig::off().service_name("dlr-worker"), "dlr-worker");
        assert!(parse_resource_attributes("novalue").is_err());
        assert!(parse_resource_attributes("k=%zz").is_err());
    }

    #[test]
    fn export_is_off_without_an_endpoint_and_bad_values_are_refused() {
        let demo = Demo::try_parse_from(["demo"]).expect("defaults parse");
        assert!(!demo.tracing.exporting());
        assert_eq!(demo.tracing.protocol, OtlpProtocol::HttpProtobuf);
        let demo = Demo::try_parse_from([
            "demo",
            "--otel-exporter-otlp-endpoint",
            "http://127.0.0.1:4317",
            "--otel-exporter-otlp-protocol",
            "grpc",
            "--otel-traces-sampler",
            "parentbased_traceidratio",
            "--otel-traces-sampler-arg",
            "0.25",
        ])
        .expect("valid settings parse");
        assert!(demo.tracing.exporting());
        assert_eq!(demo.tracing.protocol, OtlpProtocol::Grpc);
        assert_eq!(demo.tracing.sampler_arg, Some(0.25));
        for bad in [
            ["--otel-traces-sampler-arg", "1.5"],
            ["--otel-exporter-otlp-protocol", "http/json"],
            ["--otel-traces-sampler", "jaeger_remote"],
            ["--otel-bsp-max-queue-size", "0"],
        ] {
            assert!(Demo::try_parse_from(["demo", bad[0], bad[1]]).is_err(), "{bad:?} accepted");
        }
    }
}
