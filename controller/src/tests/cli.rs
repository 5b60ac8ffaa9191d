//! The command line: what an operator types, and what the controller makes of it.

use clap::{CommandFactory, Parser};

use crate::{Cli, otlp_endpoint};

/// clap checks its own rules only when a command is built: fail here, not at the first start.
#[test]
fn the_command_line_is_well_formed() {
    Cli::command().debug_assert();
}

#[test]
fn a_collector_address_is_checked_before_any_waypoint_is_given_it() {
    assert_eq!(
        otlp_endpoint("http://otel-collector.observability:4317").as_deref(),
        Ok("http://otel-collector.observability:4317")
    );
    assert_eq!(
        otlp_endpoint("https://collector:4317").as_deref(),
        Ok("https://collector:4317")
    );
    // The chart's default: no collector, no tracing.
    assert_eq!(otlp_endpoint("").as_deref(), Ok(""));
    for bad in [
        "collector:4317",
        "grpc://collector:4317",
        "http://",
        "not a url",
    ] {
        let err = otlp_endpoint(bad).expect_err(bad);
        assert!(err.contains(bad), "{err}");
    }
    let refused = Cli::try_parse_from([
        "weft-controller",
        "--waypoint-otlp-endpoint",
        "collector:4317",
    ]);
    assert!(
        refused.is_err(),
        "a bad collector address stops the controller at start"
    );
    let refused = Cli::try_parse_from(["weft-controller", "--waypoint-trace-sampling", "101"]);
    let err = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("percentage from 0 to 100"), "{err}");
}
